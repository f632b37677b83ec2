"""vaectl's default VAE vs the classic pytorch/examples VAE recipe, same data, same epochs.

The recipe, re-implemented: MLP 784-400-20(-400-784), Adam lr 1e-3, batch 128, loss = BCE
summed over pixels + KL, continuous [0,1] targets, a torchvision-style Dataset of PIL images
with ToTensor per item behind a DataLoader (shuffle). vaectl's default: params.yaml's model
and train.vae (784-512-256 MLP, dynamic binarisation, pre-loaded tensors), trained by
vaectl's own loop with MLflow tracking on, early stopping off so both run the same epochs.

Both are scored on the prepared test split under both protocols:
- binarised test set (seed 0), Bernoulli likelihood: -ELBO (100 samples) and IW-NLL (k);
- continuous [0,1] targets: the BCE "-ELBO" pytorch/examples prints (not a likelihood).
Training throughput is the median over epochs of samples per second of the training loop
alone (the median shrugs off a noisy neighbour on a shared machine); vaectl's whole epoch
(validation, checkpoints, MLflow logging on top) is printed beside it.

    python benchmarks/examples_recipe.py --prepared data/prepared --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train_throughput import examples_loader  # a sibling script in benchmarks/
from vaectl import tracking
from vaectl.data import load_split
from vaectl.data.tensors import binarize, to_unit
from vaectl.models import from_config
from vaectl.objectives import expected_bernoulli_nll, gaussian_kl, iwae_log_likelihood
from vaectl.params import load_params
from vaectl.train import run as vaectl_train


class ExamplesVAE(nn.Module):
    """pytorch/examples/vae/main.py's model, with the encode/decode interface vaectl scores."""

    latent_dim, variational = 20, True

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h = torch.relu(self.fc1(x.reshape(len(x), 784)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(torch.relu(self.fc3(z)))  # logits (examples applies the sigmoid inside)


def train_examples(images: np.ndarray, epochs: int, seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = ExamplesVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = examples_loader(images, batch_size=128)
    rates = []
    for _ in range(epochs):
        began = time.perf_counter()
        for x in loader:
            x = x.reshape(len(x), 784)
            mu, logvar = model.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            bce = nn.functional.binary_cross_entropy_with_logits(model.decode(z), x, reduction="sum")
            loss = bce + gaussian_kl(mu, logvar).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rates.append(len(images) / (time.perf_counter() - began))
    return model.eval(), statistics.median(rates)


@torch.no_grad()
def score(model, x_binary: torch.Tensor, x_pixels: torch.Tensor, k: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    out = {"neg_elbo_binarised": 0.0, "iw_nll_binarised": 0.0, "neg_elbo_continuous": 0.0}
    for s in range(0, len(x_binary), 100):
        xb, pb = x_binary[s : s + 100], x_pixels[s : s + 100]
        for target, key in ((xb, "neg_elbo_binarised"), (pb, "neg_elbo_continuous")):
            mu, logvar = model.encode(target)
            out[key] += float(
                (expected_bernoulli_nll(model, target, 100, gen) + gaussian_kl(mu, logvar)).sum()
            )
        out["iw_nll_binarised"] += float(-iwae_log_likelihood(model, xb, k, 250, gen).sum())
    return {key: value / len(x_binary) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iw-samples", type=int, default=1000)
    args = parser.parse_args()

    params = load_params(args.params)
    params = dataclasses.replace(
        params,
        train=dataclasses.replace(
            params.train, vae=dataclasses.replace(params.train.vae, epochs=args.epochs, patience=0)
        ),
    )
    train_images, _ = load_split(args.prepared, "train")
    test_images, _ = load_split(args.prepared, "test")
    x_pixels = to_unit(test_images, torch.device("cpu"))
    x_binary = binarize(x_pixels, torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        summary = vaectl_train("vae", params, args.prepared, Path(tmp) / "vae", Path(tmp) / "c.json")
        state = torch.load(Path(tmp) / "vae" / "last.pt", weights_only=True)
        ours_rate = statistics.median(tracking.metric_history(summary["run_id"], "samples_per_s"))
        ours_whole_epoch = statistics.median(
            len(train_images) / t for t in tracking.metric_history(summary["run_id"], "epoch_time_s")
        )
    ours = from_config(summary["model_config"])
    ours.load_state_dict(state["model"])
    theirs, theirs_rate = train_examples(train_images, args.epochs, seed=0)
    rows = {
        "vaectl default": (score(ours.eval(), x_binary, x_pixels, args.iw_samples), ours_rate),
        "pytorch/examples": (score(theirs, x_binary, x_pixels, args.iw_samples), theirs_rate),
    }
    print(
        f"{len(train_images)} train / {len(test_images)} test images, {args.epochs} epochs each, "
        f"{torch.get_num_threads()} threads, IW k={args.iw_samples}; final-epoch weights"
    )
    print(f"{'recipe':<18}{'-ELBO bin':>11}{'IW-NLL bin':>12}{'-ELBO cont':>12}{'train samples/s':>17}")
    for name, (m, rate) in rows.items():
        print(
            f"{name:<18}{m['neg_elbo_binarised']:>11.2f}{m['iw_nll_binarised']:>12.2f}"
            f"{m['neg_elbo_continuous']:>12.2f}{rate:>17.0f}"
        )
    print(f"vaectl's whole epoch (validation, checkpoints, MLflow): {ours_whole_epoch:.0f} samples/s")


if __name__ == "__main__":
    main()
