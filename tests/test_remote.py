"""A shared MLflow tracking server on loopback: MLFLOW_TRACKING_URI sends train, evaluate,
register and pull there, runs and artifacts included; nothing lands in the local store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaectl import tracking

from .conftest import free_port, wait_until_up
from .tiny import train_to_registry

pytestmark = pytest.mark.e2e  # a tracking server and subprocesses

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking_server(tmp_path):
    """`make server` as docs/deployment.md documents it (sqlite backend, served artifact root), on a free
    port, with this interpreter's venv (never reinstalled)."""
    port, store, venv = free_port(), tmp_path / "server", Path(sys.executable).parent.parent
    server = subprocess.Popen(
        [
            "make",
            "-o",
            str(venv / ".installed"),
            "server",
            f"VENV={venv}",
            f"SERVER_DIR={store}",
            f"SERVER_PORT={port}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", timeout_s=120)
        # sized for a small machine: MLflow's launcher and one web worker, no job runners
        # (MLflow 3's default: 4 workers and 4 job consumers, 15 processes and 2.6 GiB)
        session = subprocess.run(["ps", "-o", "args=", "-s", str(server.pid)], capture_output=True, text=True)
        assert len([p for p in session.stdout.splitlines() if "python" in p]) == 2, session.stdout
        yield f"http://127.0.0.1:{port}", store
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_every_stage_tracks_to_the_server(tmp_path, tracking_server, monkeypatch, capfd):
    uri, store = tracking_server
    root = tmp_path / "client"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VAECTL_ROOT", str(root))
    deployed = train_to_registry(root)
    assert deployed["first"]["vae"]["promoted"]

    kinds = {run.data.tags["vaectl.kind"] for run in tracking.find_runs("vaectl")}
    assert {"vae", "ae", "evaluate"} <= kinds
    printed = capfd.readouterr()
    # each run's link opens MLflow 3's training view; MLflow's own (GenAI view) is not printed
    assert f"MLflow run train-vae: {uri}/#/experiments/" in printed.err
    assert "?workflowType=machine_learning" in printed.err and "View run" not in printed.out
    assert tracking.client().get_model_version_by_alias("vae-mnist", "champion").version == "1"
    server_files = {p.name for p in (store / "artifacts").rglob("*") if p.is_file()}
    assert {"best.pt", "reconstruct.onnx", "MLmodel"} <= server_files  # the server holds artifacts
    assert not (root / "mlruns").exists()  # and the client kept no local store

    pulled = subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", "vae-mnist@champion", "--dest", str(tmp_path / "pulled")],
        cwd=root,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "files verified" in pulled.stdout and (tmp_path / "pulled" / "artifacts" / "decoder.onnx").exists()
