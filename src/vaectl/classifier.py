"""`vaectl classifier`: a small seeded MLP digit classifier, the judge of how real decoded
images look (its confidence on interpolation midpoints and samples vs on real images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaectl.data import load_split
from vaectl.files import write_json
from vaectl.models import mlp
from vaectl.params import ClassifierParams
from vaectl.train import save_checkpoint, to_unit


def build_classifier(hidden: list[int]) -> nn.Sequential:
    return mlp([784, *hidden, 10])


@torch.no_grad()
def confidence(classifier: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Mean max-probability and mean predictive entropy (nats) over flattened [0,1] images."""
    classifier.eval()
    log_p = torch.log_softmax(classifier(images.reshape(len(images), -1)), -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return {"max_prob": float(log_p.exp().max(-1).values.mean()), "entropy": float(entropy.mean())}


def load_classifier(path: Path) -> nn.Module:
    from vaectl import UserError

    if not path.exists():
        raise UserError(f"classifier not found: {path} (run `vaectl classifier`)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_classifier(state["hidden"])
    model.load_state_dict(state["model"])
    return model.eval()


def run(params: ClassifierParams, prepared: Path, out_dir: Path) -> dict:
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    images, labels = load_split(prepared, "train")
    val_images, val_labels = load_split(prepared, "val")
    x, y = to_unit(images, torch.device("cpu")), torch.from_numpy(labels.astype(np.int64))
    model = build_classifier(params.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    for _ in range(params.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), params.batch_size):
            idx = order[start : start + params.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        val_pred = model(to_unit(val_images, torch.device("cpu"))).argmax(-1).numpy()
    summary = {"val_accuracy": float((val_pred == val_labels).mean()), "hidden": params.hidden,
               "epochs": params.epochs}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "classifier.pt", {"model": model.state_dict(), "hidden": params.hidden})
    write_json(out_dir / "summary.json", summary)
    return summary
