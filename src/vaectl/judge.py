"""The realism judge: a small MLP digit classifier (trained by `vaectl classifier`) whose
confidence on decoded images, against its confidence on real ones, says how real they look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaectl import UserError, custody
from vaectl.archs import PIXELS
from vaectl.archs.mlp import layers
from vaectl.checkpoints import read_checkpoint, restore

CLASSES = 10


def build_classifier(hidden: list[int]) -> nn.Sequential:
    return layers([PIXELS, *hidden, CLASSES])


@torch.no_grad()
def scores(classifier: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (flattened, [0, 1]): the classifier's max-probability and its predictive
    entropy in nats. A recognisable digit gets a high max-probability, low entropy."""
    classifier.eval()
    log_p = torch.log_softmax(classifier(images.reshape(len(images), -1)), -1)
    return {"max_prob": log_p.exp().max(-1).values, "entropy": -(log_p.exp() * log_p).sum(-1)}


def judge_images(classifier: nn.Module, images: torch.Tensor, hole_threshold: float) -> dict[str, np.ndarray]:
    """`scores` per image as float64 arrays, plus `unrecognised`: 1 where the image is a hole
    (max-probability below `hole_threshold`: no digit the classifier recognises), else 0."""
    judged = {k: v.double().numpy() for k, v in scores(classifier, images).items()}
    judged["unrecognised"] = (judged["max_prob"] < hole_threshold).astype(np.float64)
    return judged


def load_classifier(path: Path, experiment: str) -> tuple[nn.Module, str]:
    """(the judge, its sha256): classifier.pt as a `vaectl classifier` run recorded it."""
    if not path.exists():
        raise UserError(f"classifier not found: {path} (run `vaectl classifier`)")
    _, tags = custody.recorded_run(path, custody.CLASSIFIER, experiment, "classifier")
    state = read_checkpoint(path)
    model = restore(
        lambda: build_classifier(state["hidden"]),
        state,
        path,
        "not a classifier of `vaectl classifier`",
        "run it again",
    )
    return model, tags[custody.CLASSIFIER.tag]  # the digest recorded_run has just matched
