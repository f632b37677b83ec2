"""Prepared data: data/prepared/{train,val,test}.npz + manifest.json, written by `vaectl fetch`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.files import sha256_file

SPLITS = ("train", "val", "test")


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8 N) of one prepared split."""
    path = Path(prepared) / f"{split}.npz"
    if not path.exists():
        raise UserError(f"prepared split not found: {path} (run `vaectl fetch` first)")
    with np.load(path, allow_pickle=False) as npz:
        return npz["images"], npz["labels"]


def _manifest_path(prepared: Path) -> Path:
    path = Path(prepared) / "manifest.json"
    if not path.exists():
        raise UserError(f"data manifest not found: {path} (run `vaectl fetch` first)")
    return path


def load_manifest(prepared: Path) -> dict:
    return json.loads(_manifest_path(prepared).read_text())


def manifest_sha256(prepared: Path) -> str:
    """The data's identity: models record it, evaluation and export check it."""
    return sha256_file(_manifest_path(prepared))
