"""Where the pipeline keeps its files, under the project root: the one declaration that the
CLI's defaults follow, and dvc.yaml's paths with them (tests/test_layering.py checks).

A model is known by its name everywhere (`--model NAME`): its checkpoints are models/NAME/
and its per-epoch curves reports/curves/NAME.json, which its training writes and its
evaluation reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vaectl import UserError

CLASSIFIER_FILE = "classifier.pt"  # what `vaectl classifier` writes in its folder


KINDS = ("vae", "ae")  # the two latent heads of one skeleton (vaectl.models builds them)

# the models the pipeline compares, by name (`--model` / `--baseline` of evaluate, ood, report)
DEFAULT_MODELS = ("vae", "ae")
DEFAULT_MODELS_2D = ("vae-2d", "ae-2d")  # the 2-D experiment's (`vaectl holes`)

# a model's name is one path component under models/: it never climbs out of the project
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def checked_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it names the folder models/NAME)"
        )
    return name


@dataclass(frozen=True)
class ModelFiles:
    """One trained model's files: its checkpoint folder (best.pt, last.pt, summary.json) and
    its training curves (a DVC plot, kept among the reports)."""

    dir: Path
    curves: Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def model(self, name: str) -> ModelFiles:
        name = checked_model_name(name)
        return ModelFiles(self.root / "models" / name, self.reports / "curves" / f"{name}.json")

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def classifier(self) -> Path:
        return self.models / "classifier"

    @property
    def classifier_checkpoint(self) -> Path:
        return self.classifier / CLASSIFIER_FILE

    @property
    def exports(self) -> Path:
        return self.root / "export"

    @property
    def validation(self) -> Path:
        return self.reports / "validation.json"

    @property
    def data_docs(self) -> Path:
        return self.reports / "data_docs"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def holes(self) -> Path:
        return self.reports / "holes.json"

    @property
    def holes_figures(self) -> Path:
        return self.reports / "holes"

    @property
    def ood(self) -> Path:
        return self.reports / "ood.json"

    @property
    def ood_figures(self) -> Path:
        return self.reports / "ood"

    @property
    def registry(self) -> Path:
        return self.reports / "registry.json"

    @property
    def study(self) -> Path:
        return self.reports / "study"


LAYOUT = Layout()
