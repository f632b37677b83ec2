"""`vaectl train --nproc 2`: two real CPU processes under torchrun (gloo), against one."""

import json
import os
import subprocess
import sys

import pytest
import torch

from vaectl import UserError, custody, tracking
from vaectl import train as train_stage
from vaectl.files import sha256_file
from vaectl.params import parse_params

from .tiny import TINY, assert_same_weights, weights

# Same global batch, permutation and binarisation as one process; only the second process's
# reparameterisation noise differs, so the validation losses differ by noise alone.
VAL_LOSS_TOLERANCE = 0.02  # relative
TWO_PROCESS = {**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "epochs": 6}}}


# torchrun workers, each test on its own MLflow store
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("local_store")]


def train(tmp_path, prepared, name, *args, epochs=6, model=None):
    params = {
        **TWO_PROCESS,
        "model": {**TWO_PROCESS["model"], **(model or {})},
        "train": {**TWO_PROCESS["train"], "vae": {**TWO_PROCESS["train"]["vae"], "epochs": epochs}},
    }
    (tmp_path / f"params-{epochs}.yaml").write_text(json.dumps(params))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vaectl",
            "train",
            "--model",
            name,
            "--kind",
            "vae",
            "--params",
            f"params-{epochs}.yaml",
            "--prepared",
            str(prepared),
            *args,
        ],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )


# The VampPrior's pseudo-images are used outside DDP's forward (by the KL), the encoder both
# inside and outside it: the two-process run must still run, learn and match one.
@pytest.mark.parametrize("model", [{}, {"pseudo_inputs": 5}], ids=["n01-prior", "vampprior"])
def test_two_processes_reach_the_loss_of_one(tmp_path, prepared, model):
    one = train(tmp_path, prepared, "one", model=model)
    two = train(tmp_path, prepared, "two", "--nproc", "2", model=model)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stdout.count("two: best val loss") == 1  # rank 1 prints nothing
    curves = {
        name: [
            e["val_loss"]
            for e in torch.load(tmp_path / "models" / name / "last.pt", weights_only=True)["history"]
        ]
        for name in ("one", "two")
    }
    assert curves["two"][-1] < curves["two"][0] - 20  # it learns
    assert abs(curves["two"][-1] - curves["one"][-1]) / curves["one"][-1] < VAL_LOSS_TOLERANCE
    assert curves["two"] != curves["one"]  # really a different run, not a single process
    (run,) = tracking.find_runs("vaectl", "params.processes = '2'")  # only rank 0 logged
    assert run.info.status == "FINISHED"
    assert run.data.tags[custody.CHECKPOINT.tag] == sha256_file(tmp_path / "models" / "two" / "best.pt")


def test_two_process_resume_equals_uninterrupted(tmp_path, prepared):
    assert train(tmp_path, prepared, "whole", "--nproc", "2", epochs=4).returncode == 0
    assert train(tmp_path, prepared, "split", "--nproc", "2", epochs=2).returncode == 0
    wrong = train(tmp_path, prepared, "split", "--resume", epochs=4)
    assert wrong.returncode == 1 and "resume with --nproc 2" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    resumed = train(tmp_path, prepared, "split", "--nproc", "2", "--resume", epochs=4)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(
        weights(tmp_path / "models" / "whole" / "last.pt"), weights(tmp_path / "models" / "split" / "last.pt")
    )


def test_more_processes_than_gpus_is_caught_before_launch(tmp_path, prepared, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    params = parse_params(
        {
            **TINY,
            "numerics": {"mode": "fast"},  # portable numerics refuse CUDA
            "train": {**TINY["train"], "device": "cuda"},
        }
    )
    with pytest.raises(UserError, match="--nproc 2 on CUDA needs 2 GPUs, this machine has 1"):
        train_stage.preflight("vae", params, prepared, tmp_path / "m", False, 2)
    train_stage.preflight("vae", params, prepared, tmp_path / "m", False, 1)  # one per GPU is fine
