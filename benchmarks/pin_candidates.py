"""Candidate portable pins: what each costs in training, and whether its bytes depend on the
thread count. Evidence for choosing a faster `numerics.mode: portable`, not a change of it.

Each candidate is a set of environment pins (ATen's kernel set, MKL's code path) on top of
the ones every candidate keeps (numpy's baseline loops, no GPU). Each candidate × thread
count trains params.yaml's VAE for --epochs on the prepared data in its own process, from
the same initial weights, interleaved and repeated (median kept); the sha256 of the final
weights says whether two settings computed the same bytes. Run on an Intel and an AMD CPU,
the --out files say which candidates also agree across vendors (compare their hashes).

    python benchmarks/pin_candidates.py --prepared data/prepared --out docs/benchmarks/pins_NAME.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEPT = {"NPY_DISABLE_CPU_FEATURES", "CUDA_VISIBLE_DEVICES"}  # pinned as portable pins them
CANDIDATES = {
    "ATen default, MKL COMPATIBLE (portable)": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
    "ATen avx2, MKL COMPATIBLE": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"},
    "ATen default, MKL AVX2 (Intel honours it; AUTO elsewhere)": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "AVX2",
    },
    "ATen default, MKL AUTO": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO"},
    "ATen avx2, MKL AUTO": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AUTO"},
}


def worker(args) -> None:
    """Train in this process under the environment it was given; print rate and weights hash."""
    import torch

    from vaectl.data import load_split
    from vaectl.data.tensors import to_unit
    from vaectl.models import build_model
    from vaectl.numerics import adam
    from vaectl.objectives import loss_terms
    from vaectl.params import load_params

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    t = params.train.vae
    torch.manual_seed(0)
    model = build_model("vae", params.model, t.latent_dim)
    optimizer = adam(model.parameters(), t.lr)
    x = to_unit(load_split(args.prepared, "train")[0], torch.device("cpu"))
    began = time.perf_counter()
    for _ in range(args.epochs):
        for start in range(0, len(x), t.batch_size):
            loss = loss_terms(model, x[start : start + t.batch_size])[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    rate = args.epochs * len(x) / (time.perf_counter() - began)
    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    print(json.dumps({"rate": rate, "sha256": hashlib.sha256(weights).hexdigest()}))


def measure(args, pins: dict, threads: int) -> dict:
    from vaectl.numerics import PORTABLE_ENV

    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    env |= {k: PORTABLE_ENV[k] for k in KEPT} | pins | {"OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads)]
    cmd += ["--params", str(args.params), "--prepared", str(args.prepared), "--epochs", str(args.epochs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpuinfo(field: str) -> str:
    """The first value of `field` in Linux's /proc/cpuinfo ("" where absent)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures and hashes here as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not (args.prepared / "manifest.json").is_file():
        sys.exit(f"error: no prepared data in {args.prepared} (run `vaectl fetch` or `make repro`)")
    runs = [(name, threads) for name in CANDIDATES for threads in (1, 2)]
    found: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
    for _ in range(args.repeats):  # interleaved
        for name, threads in runs:
            found[(name, threads)].append(measure(args, CANDIDATES[name], threads))
    rows = []
    for (name, threads), results in found.items():
        hashes = {r["sha256"] for r in results}
        rows.append(
            {
                "candidate": name,
                "pins": CANDIDATES[name],
                "threads": threads,
                "samples_per_s": round(statistics.median(r["rate"] for r in results)),
                "sha256": hashes.pop() if len(hashes) == 1 else "differs between repeats",
            }
        )
    base = rows[0]
    print(f"training {args.epochs} epochs; median of {args.repeats}; ratio to {base['candidate']}, 1 thread")
    print("| candidate | threads | samples/s | ratio | weights | same bytes at 1 and 2 threads |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        other = next(r for r in rows if r["candidate"] == row["candidate"] and r is not row)
        print(
            f"| {row['candidate']} | {row['threads']} | {row['samples_per_s']} | "
            f"{row['samples_per_s'] / base['samples_per_s']:.2f} | {row['sha256'][:12]} | "
            f"{'yes' if row['sha256'] == other['sha256'] else 'no'} |"
        )
    if args.out:
        record = {
            "cpu": cpuinfo("model name"),
            "vendor": cpuinfo("vendor_id"),
            "avx512f": "avx512f" in cpuinfo("flags").split(),
            "date": time.strftime("%Y-%m-%d"),
            "epochs": args.epochs,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
