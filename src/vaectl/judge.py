"""The realism judge: a small MLP digit classifier (trained by `vaectl classifier`) whose
confidence on decoded images, against its confidence on real ones, says how real they look."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vaectl import UserError
from vaectl.checkpoints import read_checkpoint
from vaectl.models import PIXELS, mlp

CLASSES = 10


def build_classifier(hidden: list[int]) -> nn.Sequential:
    return mlp([PIXELS, *hidden, CLASSES])


@torch.no_grad()
def scores(classifier: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (flattened, [0, 1]): the classifier's max-probability and its predictive
    entropy in nats. A recognisable digit gets a high max-probability, low entropy."""
    classifier.eval()
    log_p = torch.log_softmax(classifier(images.reshape(len(images), -1)), -1)
    return {"max_prob": log_p.exp().max(-1).values, "entropy": -(log_p.exp() * log_p).sum(-1)}


def load_classifier(path: Path) -> nn.Module:
    if not path.exists():
        raise UserError(f"classifier not found: {path} (run `vaectl classifier`)")
    state = read_checkpoint(path)
    model = build_classifier(state["hidden"])
    model.load_state_dict(state["model"])
    return model.eval()
