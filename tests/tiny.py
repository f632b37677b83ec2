"""What several test modules share: the tiny configurations (seconds per model on 2 cores),
weight comparisons, and the tiny train-to-registry chain."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from vaectl import classifier as classifier_stage
from vaectl import evaluate as evaluate_stage
from vaectl import export as export_stage
from vaectl import registry
from vaectl import train as train_stage
from vaectl.layout import Layout
from vaectl.models import AutoEncoder, build_model
from vaectl.params import ModelParams, RegistryParams, parse_params

from .conftest import synthetic_digits, use_local_store, write_prepared


def net(
    kind: str, arch: str, hidden: list[int], latent_dim: int, logvar_clip=(), pseudo_inputs: int = 0
) -> AutoEncoder:
    """build_model with the model's params spelled out in one call."""
    return build_model(
        kind,
        ModelParams(
            arch=arch, hidden=list(hidden), logvar_clip=list(logvar_clip), pseudo_inputs=pseudo_inputs
        ),
        latent_dim,
    )


TINY = {
    "model": {"hidden": [32]},
    "train": {
        "device": "cpu",
        "vae": {"latent_dim": 2, "epochs": 4, "batch_size": 64, "sample_every": 2},
        "ae": {"latent_dim": 2, "epochs": 4, "batch_size": 64},
    },
}
TINY_EVAL = {
    **TINY,
    "eval": {
        "iw_samples": 50,
        "iw_chunk": 16,
        "interp_pairs": 4,
        "interp_steps": 5,
        "ppl_samples": 4,
        "generated": 20,
        "classifier": {"hidden": [16], "epochs": 2},
    },
    "ood": {"images": 40, "iw_samples": 5, "elbo_samples": 2},
    # two betas at one latent size, two seeds: the fewest trials that still show a shared AE and
    # an interval across seeds (4 DVC experiments; the latent sweep's code path is the beta one's)
    "study": {"betas": [1.0, 2.0], "latent_dims": [2], "seeds": [0, 1], "iw_samples": 20},
}


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


TINY_DEPLOY = {**TINY_EVAL, "model": {**TINY_EVAL["model"], "pseudo_inputs": 3}}


def train_to_registry(root):
    """Tiny models trained, evaluated, exported and registered under `root`, tracked wherever
    MLFLOW_TRACKING_URI points. The VAE has a VampPrior (3 pseudo-images), so its mixture
    goes the whole way to the pyfunc's sample mode; the AE's fitted Gaussian is the 1-component case."""
    prepared = write_prepared(
        root / "prepared",
        {"train": synthetic_digits(30, 1), "val": synthetic_digits(5, 2), "test": synthetic_digits(5, 3)},
    )
    params, layout = parse_params(TINY_DEPLOY), Layout(root)
    for kind in ("vae", "ae"):
        train_stage.run(kind, params, prepared, layout.model(kind).dir, layout.model(kind).curves)
    classifier_stage.run(params.eval.classifier, prepared, root / "models" / "classifier", "vaectl")
    evaluate_stage.run(
        params.eval,
        prepared,
        layout.model("vae"),
        layout.model("ae"),
        layout.classifier_checkpoint,
        layout.reports,
        layout.figures,
        "vaectl",
        echo=lambda message: None,
    )
    parities = export_stage.run(
        ("vae", "ae"), prepared, root / "models", root / "reports" / "metrics.json", root / "export", "vaectl"
    )
    cards = {kind: json.loads((root / "export" / kind / "model_card.json").read_text()) for kind in parities}
    rule = RegistryParams(require_smoother_than_baseline=False)
    first = registry.register(rule, root / "export", prepared, "vaectl", root / "reports" / "registry.json")
    return {
        "root": root,
        "prepared": prepared,
        "cards": cards,
        "parities": parities,
        "first": first,
        "rule": rule,
    }


@contextlib.contextmanager
def registered_on_a_local_store(root):
    """`train_to_registry` under `root` with its own sqlite store, which the environment points
    at for the block; yields its result and that environment (`env`) for subprocesses."""
    with pytest.MonkeyPatch.context() as mp:
        use_local_store(mp, root)
        yield {**train_to_registry(root), "env": {**os.environ}}
