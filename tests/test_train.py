import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from vaectl import UserError, tracking
from vaectl import train as train_stage
from vaectl.params import parse_params

from .tiny import TINY, assert_same_weights, weights

pytestmark = pytest.mark.usefixtures("local_store")  # every test on its own MLflow store


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_two_runs_are_identical(tmp_path, prepared, kind):
    params = parse_params(TINY)
    a, b = tmp_path / "a", tmp_path / "b"  # one model name (m), trained twice
    first = train_stage.run(kind, params, prepared, a / "m", a / "m.json")
    second = train_stage.run(kind, params, prepared, b / "m", b / "m.json")
    assert json.loads((a / "m.json").read_text()) != []
    assert first["best_val_loss"] == second["best_val_loss"]
    assert_same_weights(weights(a / "m" / "last.pt"), weights(b / "m" / "last.pt"))
    # DVC-tracked outputs hold only what params, data and the model's name determine
    for name in ("m.json", "m/summary.json", "m/best.pt", "m/last.pt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = train_stage.run(kind, params, prepared, b / "n", b / "n.json")  # another name
    assert json.loads((b / "n" / "summary.json").read_text())["model_name"] == "n"
    assert (b / "n" / "summary.json").read_bytes() != (b / "m" / "summary.json").read_bytes()
    assert other["best_val_loss"] == first["best_val_loss"]
    assert tracking.run_status(first["run_id"]) == "FINISHED"
    assert first["run_id"] != second["run_id"]


def test_learning_reduces_the_loss(tmp_path, prepared):
    summary = train_stage.run("vae", parse_params(TINY), prepared, tmp_path / "m", tmp_path / "c.json")
    curve = json.loads((tmp_path / "c.json").read_text())
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 20
    # better than the best model that ignores the image: p = 0.5 everywhere costs 784 ln 2
    assert summary["epochs_run"] == 4 and 0 < summary["best_val_loss"] < 784 * math.log(2)


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
def test_resume_equals_uninterrupted(tmp_path, prepared, binarize):
    full = parse_params(
        {**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "binarize": binarize}}}
    )
    short = parse_params(
        {
            **TINY,
            "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "binarize": binarize, "epochs": 2}},
        }
    )
    whole = train_stage.run("vae", full, prepared, tmp_path / "whole", tmp_path / "w.json")
    split = train_stage.run("vae", short, prepared, tmp_path / "split", tmp_path / "s.json")
    resumed = train_stage.run("vae", full, prepared, tmp_path / "split", tmp_path / "s.json", resume=True)
    assert_same_weights(weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "split" / "last.pt"))
    assert resumed["best_val_loss"] == whole["best_val_loss"]
    losses = lambda p: [e["val_loss"] for e in json.loads(p.read_text())]  # noqa: E731
    assert losses(tmp_path / "w.json") == losses(tmp_path / "s.json")
    assert resumed["run_id"] == split["run_id"] != whole["run_id"]  # continued its own first run


def test_early_stopping(tmp_path, prepared):
    params = parse_params(
        {
            **TINY,
            "train": {**TINY["train"], "ae": {**TINY["train"]["ae"], "epochs": 50, "patience": 1, "lr": 0.5}},
        }
    )
    summary = train_stage.run("ae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    assert summary["stopped_early"] and summary["epochs_run"] < 50


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_sigterm_leaves_a_usable_checkpoint_and_a_killed_run(tmp_path, prepared, nproc):
    (tmp_path / "params.yaml").write_text(
        json.dumps(
            {
                **TINY,
                "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "epochs": 100000, "patience": 0}},
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaectl",
            "train",
            "--model",
            "m",
            "--kind",
            "vae",
            "--prepared",
            str(prepared),
            "--nproc",
            nproc,
        ],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "models" / "m" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert err.count("interrupted:") == 1  # once, not once per process
    state = torch.load(last, weights_only=True)
    assert state["epoch"] >= 1
    (run,) = tracking.find_runs("vaectl")
    assert run.info.status == "KILLED"


def test_bad_model_and_missing_checkpoint(tmp_path, prepared):
    (tmp_path / "params.yaml").write_text("{}\n")
    for args, message in [
        (["--model", "gan"], "--kind must be one of vae, ae, got 'gan' (from --model gan; give --kind)"),
        (["--model", "m", "--kind", "vqvae"], "--kind must be one of vae, ae, got 'vqvae'"),
        (["--model", "ae", "--resume", "--prepared", str(prepared)], "no checkpoint to resume from"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "vaectl", "train", *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_divergence_stops_with_a_clear_error(tmp_path, prepared):
    params = parse_params({**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "lr": 1e12}}})
    with pytest.raises(UserError, match=r"training diverged in epoch 1: loss nan .* lower train.vae.lr"):
        train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    (run,) = tracking.find_runs("vaectl")
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, "truncate"])
def test_a_damaged_checkpoint_is_one_clear_line(tmp_path, prepared, content):
    train_stage.run("vae", parse_params(TINY), prepared, tmp_path / "models" / "m", tmp_path / "c.json")
    last = tmp_path / "models" / "m" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000] if content == "truncate" else content)
    (tmp_path / "params.yaml").write_text(json.dumps(TINY))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaectl",
            "train",
            "--model",
            "m",
            "--kind",
            "vae",
            "--resume",
            "--prepared",
            str(prepared),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: models/m/last.pt is not a readable vaectl checkpoint")


def test_a_signal_during_mlflow_logging_finishes_the_epoch_then_stops(tmp_path, prepared, monkeypatch):
    """SIGTERM landing inside an MLflow write once left SQLite locked and the run unmarkable:
    the stop now waits for the next step, so the epoch's writes complete and the run is KILLED."""
    original = tracking.Run.log_metrics

    def log_then_signal(self, metrics, step=None):
        original(self, metrics, step)
        if step == 2:  # the second epoch's metrics (steps count epochs from 1)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tracking.Run, "log_metrics", log_then_signal)
    params = parse_params(
        {**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "epochs": 50, "patience": 0}}}
    )
    with pytest.raises(KeyboardInterrupt):
        train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    assert torch.load(tmp_path / "m" / "last.pt", weights_only=True)["epoch"] == 2
    (run,) = tracking.find_runs("vaectl")
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_resume_refuses_changed_params_and_records_the_allowed_ones(tmp_path, prepared):
    def params(**vae):
        return parse_params({**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], **vae}}})

    out = tmp_path / "m"
    first = train_stage.run("vae", params(epochs=2), prepared, out, tmp_path / "c.json")
    for changed, named in [
        ({"lr": 0.01}, "train.vae.lr 0.001 -> 0.01"),
        ({"batch_size": 32, "beta": 2.0}, "train.vae.batch_size 64 -> 32, train.vae.beta 1.0 -> 2.0"),
    ]:
        with pytest.raises(UserError, match=f"cannot resume .* with other params \\({named}\\)"):
            train_stage.run(
                "vae", params(epochs=3, **changed), prepared, out, tmp_path / "c.json", resume=True
            )
    resumed = train_stage.run(
        "vae", params(epochs=3, patience=5), prepared, out, tmp_path / "c.json", resume=True
    )
    assert resumed["run_id"] == first["run_id"] and resumed["epochs_run"] == 3
    tags = tracking.client().get_run(first["run_id"]).data.tags
    assert tags["vaectl.resumed_with"] == "train.vae.epochs: 2 -> 3; train.vae.patience: 10 -> 5"


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, prepared):
    from vaectl.files import exclusive_dir

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    with exclusive_dir(tmp_path / "models" / "vae", "test"):  # as a first `vaectl train` would
        out = subprocess.run(
            [sys.executable, "-m", "vaectl", "train", "--model", "vae", "--prepared", str(prepared)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        "error: models/vae is in use by another `vaectl train`; wait for it "
        "to finish, or write somewhere else"
    )
    assert not (tmp_path / "models" / "vae" / "last.pt").exists()
    # no folder is left behind by a start that failed
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "train", "--model", "ae", "--resume", "--prepared", str(prepared)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and not (tmp_path / "models" / "ae").exists()


LOSS_METRICS = {
    "train/recon_nll",
    "val/recon_nll",
    "train/neg_elbo",
    "val/neg_elbo",
    "train/kl",
    "val/kl",
    "kl_weight",
}


def test_epoch_lines_are_one_based_and_the_ae_shows_no_kl(tmp_path, prepared, capsys):
    params = parse_params({**TINY, "train": {**TINY["train"], "ae": {**TINY["train"]["ae"], "epochs": 2}}})
    summary = train_stage.run("ae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[ae]")]
    assert [line.split(" train ")[0] for line in lines] == ["[ae] epoch 1/2", "[ae] epoch 2/2"]
    assert not any("kl" in line for line in lines)
    # in MLflow the AE's loss is its reconstruction NLL, under that name: no ELBO, no KL
    logged = set(tracking.client().get_run(summary["run_id"]).data.metrics)
    assert logged & LOSS_METRICS == {"train/recon_nll", "val/recon_nll"} and "train_loss" not in logged


@pytest.mark.parametrize("pseudo_inputs", [0, 3], ids=["n01-prior", "vampprior"])
def test_runs_share_setting_keys_and_log_readable_image_series(tmp_path, prepared, pseudo_inputs):
    params = parse_params({**TINY, "model": {**TINY["model"], "pseudo_inputs": pseudo_inputs}})
    summary = train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    run = tracking.client().get_run(summary["run_id"])
    assert run.data.params["kind"] == "vae" and run.data.params["latent_dim"] == "2"
    assert set(run.data.metrics) >= LOSS_METRICS and "train_loss" not in run.data.metrics
    curve = json.loads((tmp_path / "c.json").read_text())
    assert run.data.metrics["val/neg_elbo"] == pytest.approx(curve[-1]["val_loss"])
    assert run.data.params["train.vae.latent_dim"] == "2"
    images = [a.path for a in tracking.client().list_artifacts(summary["run_id"], "images")]
    steps = sorted({int(p.split("+step+")[1].split("+")[0]) for p in images if "samples" in p})
    assert steps == [2, 4]  # sample_every 2, epochs counted from 1
    png = next(p for p in images if "samples" in p and p.endswith(".png"))
    local = tracking.client().download_artifacts(summary["run_id"], png, str(tmp_path / "dl"))
    from PIL import Image

    assert min(Image.open(local).size) >= 3 * 28  # enlarged to be readable


def test_gradients_are_normalised_per_tensor_and_the_cosine_schedule_ends_at_zero():
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad, layer.bias.grad = torch.full((2, 3), 5.0), torch.tensor([3.0, -4.0])
    train_stage.normalise_gradients(list(layer.parameters()))
    torch.testing.assert_close(layer.bias.grad, torch.tensor([0.6, -0.8]))
    assert layer.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-6)
    cosine = parse_params({"train": {"vae": {"lr": 0.002, "lr_schedule": "cosine"}}}).train.vae
    assert [train_stage.learning_rate(cosine, p) for p in (0, 0.5, 1)] == pytest.approx([0.002, 0.001, 0])
    assert train_stage.learning_rate(parse_params({}).train.vae, 0.9) == 0.001


def test_the_kl_weight_rises_linearly_to_beta_over_the_warm_up():
    """Epoch e (0-based) of a W-epoch warm-up trains at beta * min(1, (e + 1) / W); no
    warm-up is beta throughout, and the AE (no beta) is 0."""
    warm = parse_params({"train": {"vae": {"beta": 2.0, "kl_warmup_epochs": 4}}}).train.vae
    assert [train_stage.kl_weight(warm, e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cold = parse_params({"train": {"vae": {"beta": 2.0}}}).train
    assert [train_stage.kl_weight(cold.vae, e) for e in range(2)] == [2.0, 2.0]
    assert train_stage.kl_weight(cold.ae, 0) == 0.0


def test_warm_up_validates_at_the_full_kl_weight(tmp_path, prepared):
    """While the KL weight rises, the validation loss (checkpoint choice, early stopping) is
    still the full -ELBO: with the warm-up's weight an early epoch would look best."""
    params = parse_params(
        {
            **TINY,
            "train": {
                **TINY["train"],
                "vae": {**TINY["train"]["vae"], "epochs": 3, "kl_warmup_epochs": 4, "patience": 1},
            },
        }
    )
    train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    curve = json.loads((tmp_path / "c.json").read_text())
    assert [e["beta"] for e in curve] == [0.25, 0.5, 0.75] and len(curve) == 3  # no stop in warm-up
    for e in curve:
        assert e["val_loss"] == pytest.approx(e["val_recon"] + e["val_kl"], rel=1e-6)


def test_a_cosine_schedule_cannot_resume_with_other_epochs(tmp_path, prepared):
    def params(epochs):
        return parse_params(
            {
                **TINY,
                "train": {
                    **TINY["train"],
                    "vae": {
                        **TINY["train"]["vae"],
                        "epochs": epochs,
                        "lr_schedule": "cosine",
                        "grad_norm": True,
                    },
                },
            }
        )

    train_stage.run("vae", params(2), prepared, tmp_path / "m", tmp_path / "c.json")
    with pytest.raises(UserError, match="train.vae.epochs 2 -> 3.*only train.vae.patience"):
        train_stage.run("vae", params(3), prepared, tmp_path / "m", tmp_path / "c.json", resume=True)


def test_a_new_experiment_opens_on_mlflow_3s_training_view():
    experiment_id = tracking.ensure_experiment("kinds")
    assert tracking.ensure_experiment("kinds") == experiment_id
    tags = tracking.client().get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_run_stopped_before_it_improves_keeps_the_previous_best_checkpoint(tmp_path, prepared, monkeypatch):
    params = parse_params(TINY)
    train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    best = (tmp_path / "m" / "best.pt").read_bytes()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the first step of the next run

    monkeypatch.setattr(train_stage, "loss_terms", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    assert (tmp_path / "m" / "best.pt").read_bytes() == best


def test_resume_refuses_a_last_checkpoint_no_training_run_recorded(tmp_path, prepared):
    params = parse_params(TINY)
    train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json")
    state = torch.load(tmp_path / "m" / "last.pt", weights_only=True)
    state["best_val"] = 0.0  # an edited checkpoint: the resumed run would never improve on it
    torch.save(state, tmp_path / "m" / "last.pt")
    with pytest.raises(UserError, match=r"last.pt \(sha256 .*\) is not what any `vaectl train` run of vae"):
        train_stage.run("vae", params, prepared, tmp_path / "m", tmp_path / "c.json", resume=True)


def alive(pid: int) -> bool:
    """Running, not exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_training_under_dvc_stops_when_dvc_is_killed(tmp_path, prepared):
    """kill -9 of `dvc repro` once left its `vaectl train` running and writing: under DVC
    (DVC_STAGE set) the trainer asks the kernel for SIGTERM when its parent dies."""
    (tmp_path / "params.yaml").write_text(
        json.dumps(
            {
                **TINY,
                "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "epochs": 100000, "patience": 0}},
            }
        )
    )
    parent = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-m', 'vaectl', 'train', '--model', 'vae', "
        f"'--prepared', {str(prepared)!r}]); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    dvc = subprocess.Popen(
        [sys.executable, "-c", parent],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DVC_STAGE": "train@vae"},
    )
    trainer = int(dvc.stdout.readline())
    deadline = time.time() + 120
    while not (tmp_path / "models" / "vae" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    dvc.kill()  # kill -9: the parent runs no clean-up
    dvc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and alive(trainer):
        time.sleep(0.2)
    if alive(trainer):
        os.kill(trainer, signal.SIGKILL)
        pytest.fail("the trainer outlived the DVC that started it")
    (run,) = tracking.find_runs("vaectl")
    assert run.info.status == "KILLED"
