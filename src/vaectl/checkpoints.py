"""Checkpoints on disk: atomic saves, safe loads (weights_only), and trained models with the
summary that says what they were trained on."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from vaectl import UserError, custody
from vaectl.files import atomic_path, read_json
from vaectl.models import AutoEncoder, from_config


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save, atomically; torch reports a failed write (a full disk) as a RuntimeError
    without the OS's reason ("iostream error", "unexpected pos"), so it becomes one line
    naming the file (the state is the trainer's own: nothing else in it can fail)."""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:
            raise UserError(
                f"{path}: the checkpoint could not be written ({str(err).splitlines()[0][:120]}); "
                "free some space or write elsewhere"
            ) from None


def read_checkpoint(path: Path) -> dict:
    """torch.load (weights only); a truncated, empty or foreign file is a UserError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
        raise UserError(
            f"{path} is not a readable vaectl checkpoint ({reason}); delete it and train again"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a vaectl checkpoint (no model weights in it)")
    return state


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no checkpoint to resume from: {path}")
    return read_checkpoint(path)


def load_trained(
    model_dir: Path, expected_kind: str, data_sha: str, experiment: str
) -> tuple[AutoEncoder, dict, tuple[str, dict]]:
    """(model in eval mode, training summary, (training run id, its tags)) from `vaectl train`'s
    best.pt and summary.json, each checked against the digests its training run recorded. The
    checkpoint's own config says what it is: a model of the other kind, or one trained on
    other data than `data_sha`, is refused."""
    best, summary_path = model_dir / "best.pt", model_dir / "summary.json"
    if not best.exists() or not summary_path.exists():
        raise UserError(
            f"no trained model in {model_dir} (run `vaectl train --model {model_dir.name} "
            f"--kind {expected_kind}`)"
        )
    state = read_checkpoint(best)
    config = state.get("model_config")
    found = config.get("kind") if isinstance(config, dict) else None
    if found != expected_kind:
        raise UserError(
            f"{best} is {'a ' + repr(found) if found else 'no vaectl model'} checkpoint, not "
            f"a {expected_kind!r} one (`vaectl train --kind {expected_kind}` writes those)"
        )
    name = model_dir.name  # the name it was trained under: another model's files are refused
    run = custody.recorded_run(
        best, custody.CHECKPOINT, experiment, expected_kind, {custody.MODEL_NAME: name}, f" named {name}"
    )
    custody.check_sibling(summary_path, custody.TRAINING_SUMMARY, *run, expected_kind)
    summary = read_json(
        summary_path, "vaectl train", ("model_config", "data_sha256", "binarize", "best_val_loss")
    )
    if summary["data_sha256"] != data_sha:
        raise UserError(
            f"{model_dir} was trained on other data than {data_sha[:12]}… "
            "(retrain, or fetch the data it was trained on)"
        )
    model = restore(
        lambda: from_config(state["model_config"]),
        state,
        best,
        "its weights do not fit its own model config",
        "train again",
    )
    return model, summary, run


def restore(build, state: dict, path: Path, mismatch: str, fix: str):
    """build() with the checkpoint's weights loaded, in eval mode; a state that does not fit
    what it claims to be is one line: `path`: `mismatch` (the reason); `fix`."""
    try:
        module = build()
        module.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: {mismatch} ({str(err).splitlines()[0][:100]}); {fix}") from None
    return module.eval()
