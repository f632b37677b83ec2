"""A trained VAE's test-set likelihood as the literature reports it, timed.

IW-NLL (eval.iw_samples, on every test image), -ELBO with its reconstruction and KL parts,
and active units: the numbers `vaectl evaluate` computes for the VAE (the same function),
without the AE baseline, classifier and interpolations it compares them with. For the
literature preset (README, "A VAE at the published level"):

    vaectl overlay params/fashion-literature.yaml > literature.yaml
    vaectl fetch -p literature.yaml --out literature/prepared
    vaectl train --model vae-literature -p literature.yaml --prepared literature/prepared
    python benchmarks/vae_likelihood.py -p literature.yaml --prepared literature/prepared \
        --model models/vae-literature --curves reports/curves/vae-literature.json

`--baseline DIR` measures a second trained VAE on the same test images (the same binarisation)
and gives the IW-NLL difference with its paired 95% bootstrap interval over the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.evaluate import ImageProgress, likelihood_metrics, test_inputs
from vaectl.params import EvalParams, load_params
from vaectl.report import compare_units


def plot_curves(history: list[dict], path: Path) -> None:
    """Training and validation -ELBO per epoch (validation at the full KL weight; training at
    the warm-up's), and the KL weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss, weight) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=[3, 1])
    loss.plot(epochs, [h["train_loss"] for h in history], label="train (at the KL weight below)")
    loss.plot(epochs, [h["val_loss"] for h in history], label="validation -ELBO")
    best = min(history, key=lambda h: h["val_loss"])
    loss.axhline(best["val_loss"], color="grey", lw=0.5)
    loss.set_ylim(best["val_loss"] - 15, best["val_loss"] + 35)
    loss.set_ylabel("nats per image")
    loss.legend(title=f"best validation {best['val_loss']:.2f} at epoch {best['epoch']}")
    weight.plot(epochs, [h["beta"] for h in history], color="black")
    weight.set_ylabel("KL weight")
    weight.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def measure(model_dir: Path, trained: tuple, test_images, params: EvalParams) -> tuple[dict, np.ndarray]:
    """(the numbers, the per-image IW-NLL) of one trained VAE, timed."""
    model, summary = trained
    x, pixels = test_inputs(test_images, summary["binarize"], params.seed)
    print(
        f"{model_dir}: {model.config()}, {len(x)} test images, k={params.iw_samples}, "
        f"{params.iw_precision} decoder, {torch.get_num_threads()} threads",
        flush=True,
    )
    began = time.perf_counter()
    progress = ImageProgress("IW-NLL", len(x), lambda m: print(m, file=sys.stderr))
    generator = torch.Generator().manual_seed(params.seed)
    metrics, _, units = likelihood_metrics(model, x, pixels, params, generator, progress)
    seconds = time.perf_counter() - began
    result = {key: metrics[key] for key in ("iw_nll", "neg_elbo", "elbo_recon", "elbo_kl", "active_units")}
    result.update(
        iw_samples=params.iw_samples,
        test_images=len(x),
        epochs_run=summary["epochs_run"],
        best_epoch=summary["best_epoch"],
        best_val_loss=summary["best_val_loss"],
        likelihood_s=round(seconds),
    )
    print(json.dumps(result, indent=1))
    print(f"{seconds:.0f} s ({seconds / 60:.1f} min) for the likelihoods of {len(x)} images", flush=True)
    return result, units["iw_nll"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--model", type=Path, default=Path("models/vae"))
    parser.add_argument("--out", type=Path, help="also write the numbers here (JSON)")
    parser.add_argument("--curves", type=Path, help="the training's reports/curves/<name>.json, to plot")
    parser.add_argument("--figure", type=Path, default=Path("literature_curve.png"))
    parser.add_argument("--baseline", type=Path, help="another trained VAE to compare on the same images")
    args = parser.parse_args()
    if args.curves:
        plot_curves(json.loads(args.curves.read_text()), args.figure)

    params = load_params(args.params).eval
    manifest, test_images = manifest_sha256(args.prepared), load_split(args.prepared, "test")[0]
    trained = load_trained(args.model, "vae", manifest, "vaectl")[:2]
    if args.baseline:
        baseline_trained = load_trained(args.baseline, "vae", manifest, "vaectl")[:2]
        if (theirs := baseline_trained[1]["binarize"]) != (ours := trained[1]["binarize"]):
            parser.error(
                f"{args.baseline} was trained on {theirs!r} images, {args.model} on {ours!r}: "
                "their test images differ, so they cannot be compared pairwise"
            )
    result, per_image = measure(args.model, trained, test_images, params)
    if args.baseline:
        baseline, baseline_per_image = measure(args.baseline, baseline_trained, test_images, params)
        c = compare_units("iw_nll", per_image, baseline_per_image, True, np.random.default_rng(params.seed))
        baseline["iw_nll_ci"] = c["ae_ci"]
        result.update(
            iw_nll_ci=c["vae_ci"],
            baseline=baseline,
            iw_nll_minus_baseline=c["difference"],
            iw_nll_minus_baseline_ci=c["difference_ci"],
        )
        (low, high), ours, theirs = c["difference_ci"], c["vae_ci"], c["ae_ci"]
        print(
            f"IW-NLL {result['iw_nll']:.2f} [{ours[0]:.2f}, {ours[1]:.2f}] ({args.model}) - "
            f"{baseline['iw_nll']:.2f} [{theirs[0]:.2f}, {theirs[1]:.2f}] ({args.baseline}) = "
            f"{c['difference']:+.2f} [{low:+.2f}, {high:+.2f}] nats: 95% bootstrap intervals over the "
            f"{len(per_image)} images, the difference's paired"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
