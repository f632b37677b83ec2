"""Checkpoints on disk: atomic saves, safe loads (weights_only), and trained models with the
summary that says what they were trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vaectl import UserError
from vaectl.files import atomic_path
from vaectl.models import AutoEncoder, from_config


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no checkpoint to resume from: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trained(model_dir: Path, expected_kind: str, data_sha: str) -> tuple[AutoEncoder, dict]:
    """(model in eval mode, training summary) from `vaectl train`'s best.pt; refuses a model
    of the other kind or one trained on other data than `data_sha`."""
    best, summary_path = model_dir / "best.pt", model_dir / "summary.json"
    if not best.exists() or not summary_path.exists():
        raise UserError(f"no trained model in {model_dir} (run `vaectl train --model {expected_kind}`)")
    summary = json.loads(summary_path.read_text())
    if summary["model_config"]["kind"] != expected_kind:
        raise UserError(f"{model_dir} holds a {summary['model_config']['kind']} model, "
                        f"expected a {expected_kind}")
    if summary["data_sha256"] != data_sha:
        raise UserError(f"{model_dir} was trained on other data than {data_sha[:12]}… "
                        "(retrain, or fetch the data it was trained on)")
    state = torch.load(best, map_location="cpu", weights_only=True)
    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval(), summary
