"""Prepared data: data/prepared/{train,val,test}.npz + manifest.json, written by `vaectl fetch`.

Every read is checked: the manifest against its own `self_sha256` (an edited manifest), each
split's arrays against the manifest's description of them (edited images or labels), so no
stage trains on or reports about data that is not what `fetch` wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.files import sha256_bytes, sha256_file

SPLITS = ("train", "val", "test")
REFETCH = "run `vaectl fetch` (or `dvc checkout data/prepared`) again"


def describe(images: np.ndarray, labels: np.ndarray) -> dict:
    """What the manifest records about a split, and what every read checks it against."""
    return {
        "count": int(len(labels)),
        "class_counts": {str(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)},
        "images_sha256": sha256_bytes(np.ascontiguousarray(images).data),
        "labels_sha256": sha256_bytes(np.ascontiguousarray(labels).data),
        "shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
    }


def self_sha256(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own `self_sha256` field."""
    body = {k: v for k, v in manifest.items() if k != "self_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8 N) of one prepared split, checked against
    the manifest (one sha256 pass over the arrays)."""
    expected = load_manifest(prepared)["splits"].get(split)
    path = Path(prepared) / f"{split}.npz"
    if not path.exists() or expected is None:
        raise UserError(f"prepared split not found: {path} (run `vaectl fetch` first)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); {REFETCH}") from None
    found = describe(images, labels)
    changed = [key for key in expected if found.get(key) != expected[key]]
    if changed:
        raise UserError(
            f"{path} does not match manifest.json ({', '.join(changed)} differ): "
            f"the prepared data was changed after `vaectl fetch`; {REFETCH}"
        )
    return images, labels


def split_label(prepared: Path, split: str) -> tuple[str, str]:
    """(name, source) that MLflow records a prepared split under: ('mnist-5k-test', its .npz)."""
    return f"{load_manifest(prepared)['source']['name']}-{split}", str(Path(prepared) / f"{split}.npz")


def _manifest_path(prepared: Path) -> Path:
    path = Path(prepared) / "manifest.json"
    if not path.exists():
        raise UserError(f"data manifest not found: {path} (run `vaectl fetch` first)")
    return path


def load_manifest(prepared: Path) -> dict:
    path = _manifest_path(prepared)
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON; {REFETCH}") from None
    if not isinstance(manifest, dict) or manifest.get("self_sha256") != self_sha256(manifest):
        raise UserError(
            f"{path} was edited after `vaectl fetch` (its self_sha256 does not match its content); {REFETCH}"
        )
    return manifest


def manifest_sha256(prepared: Path) -> str:
    """The data's identity: models record it, evaluation and export check it."""
    return sha256_file(_manifest_path(prepared))
