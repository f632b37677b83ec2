"""What `numerics.mode: portable` costs against `fast`, and which thread count to pin.

Each measurement runs in its own process, since the portable pins must be set before torch
loads (the worker calls vaectl.numerics.apply exactly as the CLI does). Settings are
interleaved and repeated, and the median is kept, so drift in the machine's load hits all of
them. Two workloads on params.yaml's model and the prepared data:
- training: forward/backward/Adam of the VAE over the train split, samples/s;
- IW-NLL: the importance-weighted likelihood of test images (k = --iw-samples), images/s, in
  float32 (portable) or in eval.iw_precision bfloat16 (fast).
The thread policy is chosen with and without a competing CPU hog (a busy loop per --hogs),
as CI runners and laptops are busy hosts; OMP_WAIT_POLICY=PASSIVE is tried against the
spin-waiting default.

    make bench   # or: python benchmarks/numerics_cost.py --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name: (numerics.mode, threads, extra environment)
    "portable, 1 thread": ("portable", 1, {}),
    "portable, 2 threads": ("portable", 2, {}),
    "fast, 1 thread": ("fast", 1, {}),
    "fast, 2 threads": ("fast", 2, {}),
    "fast, 2 threads, OMP_WAIT_POLICY=PASSIVE": ("fast", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def worker(args) -> None:
    """One measurement in this process; prints {"train": samples/s, "iw": images/s}."""
    from vaectl import numerics
    from vaectl.params import NumericsParams, load_params

    numerics.apply(NumericsParams(args.mode, args.threads))
    import torch

    from vaectl.data import load_split
    from vaectl.data.tensors import to_unit
    from vaectl.models import build_model
    from vaectl.numerics import adam
    from vaectl.objectives import iwae_log_likelihood, loss_terms

    params = load_params(args.params)
    t, m = params.train.vae, params.model
    torch.manual_seed(0)
    model = build_model("vae", m, t.latent_dim)
    optimizer = adam(model.parameters(), t.lr)
    x = to_unit(load_split(args.prepared, "train")[0], torch.device("cpu"))
    began = None
    for epoch in range(args.epochs + 1):  # the first epoch warms up and is not counted
        began = time.perf_counter() if epoch == 1 else began
        for start in range(0, len(x), t.batch_size):
            loss = loss_terms(model, x[start : start + t.batch_size])[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    train_rate = args.epochs * len(x) / (time.perf_counter() - began)
    dtype = torch.bfloat16 if args.mode == "fast" else None
    test = to_unit(load_split(args.prepared, "test")[0][: args.iw_images], torch.device("cpu"))
    began = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(test), params.eval.batch_size):
            iwae_log_likelihood(
                model,
                test[start : start + params.eval.batch_size],
                args.iw_samples,
                params.eval.iw_chunk,
                torch.Generator().manual_seed(0),
                dtype,
            )
    print(json.dumps({"train": train_rate, "iw": len(test) / (time.perf_counter() - began)}))


def measure(args, setting: str, hogs: int) -> dict[str, float]:
    from vaectl.numerics import PORTABLE_ENV

    mode, threads, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV} | extra  # fast: unpinned
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--mode",
        mode,
        "--threads",
        str(threads),
        "--params",
        str(args.params),
        "--prepared",
        str(args.prepared),
        "--epochs",
        str(args.epochs),
        "--iw-samples",
        str(args.iw_samples),
        "--iw-images",
        str(args.iw_images),
    ]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        for hog in busy:
            hog.kill()
            hog.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--iw-images", type=int, default=100)
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes in the loaded runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="portable", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not (args.prepared / "manifest.json").is_file():
        sys.exit(f"error: no prepared data in {args.prepared} (run `vaectl fetch` or `make repro`)")
    runs = [(s, h) for h in (0, args.hogs) for s in SETTINGS]
    results: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
    for _ in range(args.repeats):  # interleaved
        for setting, hogs in runs:
            results[(setting, hogs)].append(measure(args, setting, hogs))
    median = {
        run: {k: statistics.median(r[k] for r in rs) for k in ("train", "iw")} for run, rs in results.items()
    }
    base = median[("portable, 1 thread", 0)]
    print(
        f"{os.cpu_count()} cores; training {args.epochs} epochs, IW-NLL k={args.iw_samples} on "
        f"{args.iw_images} images; median of {args.repeats}; ratios to portable, 1 thread, quiet"
    )
    print("| setting | CPU hogs | training samples/s | ratio | IW-NLL images/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (setting, hogs), m in median.items():
        print(
            f"| {setting} | {hogs} | {m['train']:.0f} | {m['train'] / base['train']:.2f} "
            f"| {m['iw']:.1f} | {m['iw'] / base['iw']:.2f} |"
        )


if __name__ == "__main__":
    main()
