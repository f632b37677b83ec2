"""What each option of the literature preset buys, at a short budget: the preset, and the
preset with one option at a time back at its default (or, for the VampPrior, enlarged), trained
for the same few epochs on the same data, then the IW-NLL of the same test images (and the
preset again with another training seed, for the size of training noise).

    vaectl overlay params/fashion-literature.yaml > literature.yaml
    vaectl fetch -p literature.yaml --out literature/prepared
    python benchmarks/literature_ablation.py -p literature.yaml --prepared literature/prepared \
        --epochs 40 --images 2000 --k 1000 [--only "N(0, I) prior instead of the VampPrior" --only ...]

Every variant runs `epochs` epochs with a KL warm-up over the first fifth (the preset's 100
epochs of warm-up would not end) and a cosine schedule over those epochs. These are the
options' effects early in training, not their gains after the preset's 560 epochs. Each
difference from the preset comes with a paired 95% bootstrap interval over the test images;
the reseeded preset shows how far training noise alone moves the number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.evaluate import likelihood_metrics, test_inputs
from vaectl.params import load_params
from vaectl.report import compare_units

VARIANTS = {  # name -> (model changes, train.vae changes), relative to the preset
    "preset": ({}, {}),
    "mlp instead of gated-mlp": ({"arch": "mlp"}, {}),
    "no log-variance clip": ({"logvar_clip": []}, {}),
    "plain Adam (no unit-norm gradients)": ({}, {"grad_norm": False}),
    "constant lr (no cosine decay)": ({}, {"lr_schedule": "constant"}),
    "preset, training seed 1": ({}, {"seed": 1}),
    "N(0, I) prior instead of the VampPrior": ({"pseudo_inputs": 0}, {}),
    "VampPrior, 500 pseudo-images": ({"pseudo_inputs": 500}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--params", type=Path, default=Path("literature.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("literature/prepared"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--images", type=int, default=2000, help="test images for the IW-NLL")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--out", type=Path, help="also write the table here (JSON)")
    parser.add_argument(
        "--only", action="append", help="a variant to run, repeatable (the preset always runs)"
    )
    args = parser.parse_args()
    chosen = {"preset", *(args.only or VARIANTS)}
    if unknown := chosen - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    from vaectl import train

    preset = load_params(args.params)
    manifest = manifest_sha256(args.prepared)
    test_images = load_split(args.prepared, "test")[0][: args.images]
    eval_params = dataclasses.replace(preset.eval, iw_samples=args.k)
    results, per_image = {}, {}
    with tempfile.TemporaryDirectory(prefix="vaectl-ablation-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"  # not this repo's store
        for name, (model_changes, train_changes) in VARIANTS.items():
            if name not in chosen:
                continue
            vae = dataclasses.replace(
                preset.train.vae,
                epochs=args.epochs,
                patience=0,
                kl_warmup_epochs=args.epochs // 5,
                sample_every=args.epochs,
                **train_changes,
            )
            params = dataclasses.replace(
                preset,
                model=dataclasses.replace(preset.model, **model_changes),
                train=dataclasses.replace(preset.train, vae=vae),
            )
            out = Path(tmp) / f"model{len(results)}"
            began = time.perf_counter()
            train.run("vae", params, args.prepared, out, Path(tmp) / f"curves{len(results)}.json")
            train_s = time.perf_counter() - began
            model, summary, _ = load_trained(out, "vae", manifest, "vaectl")
            x, pixels = test_inputs(test_images, summary["binarize"], eval_params.seed)
            metrics, _, units = likelihood_metrics(
                model, x, pixels, eval_params, torch.Generator().manual_seed(eval_params.seed)
            )
            per_image[name] = units["iw_nll"]
            results[name] = {
                "iw_nll": metrics["iw_nll"],
                "neg_elbo": metrics["neg_elbo"],
                "active_units": metrics["active_units"],
                "best_val_loss": summary["best_val_loss"],
                "train_s": round(train_s),
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    rng = np.random.default_rng(0)
    print(
        f"\n{args.epochs} epochs each; IW-NLL (k={args.k}) on {len(test_images)} test images; "
        f"difference = variant - preset, paired 95% bootstrap interval over the images"
    )
    print(f"{'variant':38} {'IW-NLL':>8} {'difference [95% interval]':>30} {'val -ELBO':>10} {'units':>5}")
    for name, row in results.items():
        if name == "preset":
            diff = ""
        else:
            c = compare_units("iw_nll", per_image[name], per_image["preset"], True, rng)
            row["difference"], row["difference_ci"] = c["difference"], c["difference_ci"]
            diff = f"{c['difference']:+.2f} [{c['difference_ci'][0]:+.2f}, {c['difference_ci'][1]:+.2f}]"
        print(
            f"{name:38} {row['iw_nll']:8.2f} {diff:>30} {row['best_val_loss']:10.2f} {row['active_units']:5d}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"epochs": args.epochs, "k": args.k, "images": len(test_images), "variants": results},
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
