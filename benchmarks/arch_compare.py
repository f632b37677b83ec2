"""Two skeletons on the same data: the VAE of params.yaml on its `model.arch` against the same
VAE on another skeleton (default: `conv` with model.hidden [16, 32, 256]), each trained with
`vaectl.train.run` for every seed given, then scored on the same binarised test images.

Reported: each model's test IW-NLL (k = eval.iw_samples), the difference other − params.yaml
per seed with a paired bootstrap interval over test images, the difference across training
seeds with a t-interval (the one that speaks for the architecture, not for one run), and each
skeleton's training throughput (images/s over the whole `run`, validation and checkpoints
included) and IW-NLL throughput, measured in this one process.

    python benchmarks/arch_compare.py                           # conv [16, 32, 256], seeds 0 1 2
    python benchmarks/arch_compare.py --hidden 32 64 256 --seeds 0 --out conv.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path


def train_and_score(arch: str, hidden: list[int], seed: int, root: Path, args) -> dict:
    import torch

    from vaectl import train
    from vaectl.data import load_split
    from vaectl.evaluate import test_inputs
    from vaectl.models import from_config
    from vaectl.objectives import iwae_log_likelihood
    from vaectl.params import load_params

    params = load_params(args.params)
    model = dataclasses.replace(params.model, arch=arch, hidden=hidden)
    vae = dataclasses.replace(params.train.vae, seed=seed)
    params = dataclasses.replace(params, model=model, train=dataclasses.replace(params.train, vae=vae))
    out = root / f"{arch}-{seed}"
    started = time.perf_counter()
    summary = train.run("vae", params, args.prepared, out, root / f"{arch}-{seed}.json")
    train_s = time.perf_counter() - started
    state = torch.load(out / "best.pt", weights_only=True)
    net = from_config(state["model_config"])
    net.load_state_dict(state["model"])
    net.eval()
    x, _ = test_inputs(load_split(args.prepared, "test")[0], params.train.vae.binarize, params.eval.seed)
    train_images = len(load_split(args.prepared, "train")[0])
    started = time.perf_counter()
    with torch.no_grad():
        log_px = torch.cat(
            [
                iwae_log_likelihood(
                    net,
                    x[i : i + params.eval.batch_size],
                    params.eval.iw_samples,
                    params.eval.iw_chunk,
                    torch.Generator().manual_seed(i),
                )
                for i in range(0, len(x), params.eval.batch_size)
            ]
        )
    score_s = time.perf_counter() - started
    return {
        "arch": arch,
        "hidden": hidden,
        "seed": seed,
        "epochs_run": summary["epochs_run"],
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_images_per_s": summary["epochs_run"] * train_images / train_s,
        "train_s": train_s,
        "iw_images_per_s": len(x) / score_s,
        "iw_nll": float(-log_px.mean()),
        "per_image": (-log_px).double().numpy(),
    }


def paired_interval(diff, rng) -> list[float]:
    """The bootstrap interval of the mean paired difference over test images: as
    vaectl.report.bootstrap_mean, with 10,000 resamples (the figures in docs/results.md)."""
    from vaectl.report import interval

    return interval(diff[rng.integers(0, len(diff), (10_000, len(diff)))].mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--arch", default="conv")
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 32, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="also write the table here (JSON)")
    args = parser.parse_args()

    from vaectl.numerics import apply
    from vaectl.params import load_params

    base = load_params(args.params)
    apply(base.numerics)  # before numpy and torch load: the pipeline's numerics
    import numpy as np

    from vaectl.study import seed_interval

    rows, rng = [], np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="vaectl-arch-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for seed in args.seeds:
            ours = train_and_score(base.model.arch, base.model.hidden, seed, Path(tmp), args)
            other = train_and_score(args.arch, args.hidden, seed, Path(tmp), args)
            diff = other.pop("per_image") - ours.pop("per_image")
            rows.append(
                {
                    "seed": seed,
                    "base": ours,
                    "other": other,
                    "diff": float(diff.mean()),
                    "diff_ci_over_images": paired_interval(diff, rng),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    diffs = np.array([r["diff"] for r in rows])
    result = {"rows": rows, "diff_mean": float(diffs.mean())}
    if len(diffs) > 1:
        result["diff_ci_over_seeds"] = seed_interval(list(diffs))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
