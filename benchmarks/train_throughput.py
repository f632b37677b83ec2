"""Training throughput: vaectl's loop vs a bare loop vs the pytorch/examples DataLoader recipe.

All three train the same VAE (params.yaml's model and train.vae sizes) on the same prepared
train split, in one process, with the same thread count. vaectl's figure is its steady-state
cost per epoch with everything on (validation pass, checkpoint writes, MLflow logging),
measured as (time of an E-epoch run - time of a 1-epoch run) / (E - 1), so start-up (imports,
MLflow database creation) is not counted. Each measurement is repeated and the median kept.

    make bench            # or: python benchmarks/train_throughput.py --epochs 6 --repeats 3
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

from vaectl.data import load_split
from vaectl.data.tensors import to_unit
from vaectl.models import build_model
from vaectl.numerics import adam
from vaectl.objectives import loss_terms
from vaectl.params import load_params
from vaectl.train import run as vaectl_run


def bare_loop(x: torch.Tensor, params, epochs: int) -> float:
    """samples/s of forward/backward/Adam over pre-loaded tensors, nothing else."""
    t = params.train.vae
    torch.manual_seed(0)
    model = build_model("vae", params.model, t.latent_dim)
    optimizer = adam(model.parameters(), t.lr)
    began = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), t.batch_size):
            loss = loss_terms(model, x[order[start : start + t.batch_size]])[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epochs * len(x) / (time.perf_counter() - began)


def examples_loader(images: np.ndarray, batch_size: int) -> torch.utils.data.DataLoader:
    """pytorch/examples style input: a Dataset of PIL images, ToTensor per item, shuffled."""
    from PIL import Image
    from torchvision import transforms

    class Digits(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transforms.ToTensor()(Image.fromarray(images[i], mode="L"))

    return torch.utils.data.DataLoader(Digits(), batch_size=batch_size, shuffle=True)


def dataloader_loop(images: np.ndarray, params, epochs: int) -> float:
    """samples/s of the same model fed by `examples_loader`."""
    t = params.train.vae
    torch.manual_seed(0)
    model = build_model("vae", params.model, t.latent_dim)
    optimizer = adam(model.parameters(), t.lr)
    loader = examples_loader(images, t.batch_size)
    began = time.perf_counter()
    for _ in range(epochs):
        for xb in loader:
            loss = loss_terms(model, xb.reshape(len(xb), -1))[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epochs * len(images) / (time.perf_counter() - began)


def vaectl_loop(params, prepared: Path, epochs: int, workdir: Path) -> float:
    def timed(n_epochs: int) -> float:
        p = dataclasses.replace(
            params,
            train=dataclasses.replace(
                params.train, vae=dataclasses.replace(params.train.vae, epochs=n_epochs, patience=0)
            ),
        )
        began = time.perf_counter()
        vaectl_run("vae", p, prepared, workdir / f"m{n_epochs}", workdir / f"c{n_epochs}.json")
        return time.perf_counter() - began

    n = len(load_split(prepared, "train")[1])
    return (epochs - 1) * n / (timed(epochs) - timed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    params = load_params(args.params)
    params = dataclasses.replace(
        params,
        train=dataclasses.replace(
            params.train, device="cpu", vae=dataclasses.replace(params.train.vae, binarize="none")
        ),
    )
    images, _ = load_split(args.prepared, "train")
    x = to_unit(images, torch.device("cpu"))
    results: dict[str, list[float]] = {"bare": [], "vaectl": [], "dataloader": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        for r in range(args.repeats):  # interleaved, so drift in machine load hits all three
            results["bare"].append(bare_loop(x, params, args.epochs))
            results["vaectl"].append(vaectl_loop(params, args.prepared, args.epochs, Path(tmp) / str(r)))
            results["dataloader"].append(dataloader_loop(images, params, args.epochs))
    median = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"VAE {params.model.hidden} latent {params.train.vae.latent_dim}, batch "
        f"{params.train.vae.batch_size}, {len(x)} images, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'loop':<34}{'samples/s':>12}{'vs bare':>10}")
    labels = {
        "bare": "bare forward/backward/Adam",
        "vaectl": "vaectl train (tracking on)",
        "dataloader": "DataLoader + ToTensor (examples)",
    }
    for key, label in labels.items():
        print(f"{label:<34}{median[key]:>12.0f}{median[key] / median['bare']:>10.1%}")


if __name__ == "__main__":
    main()
