"""`vaectl classifier`: train the realism judge (`judge.py`), a small seeded MLP digit
classifier, on the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaectl import custody, numerics
from vaectl.checkpoints import save_checkpoint
from vaectl.data import load_split, manifest_sha256
from vaectl.data.tensors import to_unit
from vaectl.files import sha256_file, write_json
from vaectl.judge import build_classifier
from vaectl.layout import CLASSIFIER_FILE
from vaectl.params import ClassifierParams, flatten


def run(params: ClassifierParams, prepared: Path, out_dir: Path, experiment: str) -> dict:
    """Train it, write classifier.pt + summary.json, and record their digests in an MLflow run
    of kind `classifier`: evaluate and holes check the judge they use against it."""
    from vaectl import tracking

    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    images, labels = load_split(prepared, "train")
    val_images, val_labels = load_split(prepared, "val")
    x, y = to_unit(images, torch.device("cpu")), torch.from_numpy(labels.astype(np.int64))
    model = build_classifier(params.hidden)
    optimizer = numerics.adam(model.parameters(), params.lr)
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
    accuracy = float((val_pred == val_labels).mean())
    summary = {"val_accuracy": accuracy, "hidden": params.hidden, "epochs": params.epochs}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(
        experiment, "classifier", tracking.standard_tags("classifier", manifest_sha256(prepared))
    ) as mlrun:
        mlrun.log_params(flatten(params, "classifier"))
        mlrun.log_metrics({"val_accuracy": accuracy})
        save_checkpoint(out_dir / CLASSIFIER_FILE, {"model": model.state_dict(), "hidden": params.hidden})
        write_json(out_dir / "summary.json", summary)
        mlrun.set_tags({custody.CLASSIFIER.tag: sha256_file(out_dir / CLASSIFIER_FILE)})
    return summary
