"""Training samples/s with 1 vs N processes (`vaectl train --nproc N`, DDP: gloo on CPU).

Same params, global batch and seed for every process count; on the CPU all of them use every
core (one process: torch's default threads; N processes: cores / N threads each). With
--device cuda each process takes one GPU (nccl), so N is at most the GPU count. The figure is the
median over epochs 2..E of rank 0's training samples/s (epoch 1 warms up), and the final
validation losses show the runs learn alike.

    python benchmarks/ddp_throughput.py --prepared data/prepared --epochs 6 --nproc 1 2
    python benchmarks/ddp_throughput.py --device cuda --nproc 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vaectl import tracking


def train(params: Path, prepared: Path, nproc: int, tmp: Path) -> dict:
    out = tmp / "models" / f"nproc{nproc}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/bench.db", "VAECTL_ROOT": str(tmp)}
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vaectl",
            "train",
            "--model",
            out.name,
            "--kind",
            "vae",
            "--params",
            str(params),
            "--prepared",
            str(prepared.resolve()),
            "--nproc",
            str(nproc),
        ],
        cwd=tmp,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - began
    history = torch.load(out / "last.pt", weights_only=True)["history"]
    os.environ.update(env)  # timings are in the run's MLflow metrics, not in the checkpoint
    run_id = tracking.latest_run_id("vaectl", {"vaectl.out_dir": str(out.resolve())})
    rates = tracking.metric_history(run_id, "samples_per_s")
    return {
        "samples_per_s": statistics.median(rates[1:]),
        "val_loss": history[-1]["val_loss"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, help="global batch [default: params' train.vae]")
    args = parser.parse_args()

    raw = yaml.safe_load(args.params.read_text())
    raw["train"]["vae"].update(epochs=args.epochs, patience=0)
    raw["train"]["device"] = args.device
    if args.batch_size:
        raw["train"]["vae"]["batch_size"] = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        results = {n: train(params, args.prepared, n, Path(tmp)) for n in args.nproc}
    base = results[args.nproc[0]]["samples_per_s"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(
        f"{where}, {args.epochs} epochs, global batch {raw['train']['vae']['batch_size']}, "
        f"model {raw['model']['hidden']}"
    )
    print(f"{'processes':>9}{'samples/s':>11}{'vs first':>10}{'final val loss':>16}{'wall s':>8}")
    for n, r in results.items():
        print(
            f"{n:>9}{r['samples_per_s']:>11.0f}{r['samples_per_s'] / base:>10.2f}"
            f"{r['val_loss']:>16.2f}{r['wall_s']:>8.1f}"
        )


if __name__ == "__main__":
    main()
