"""`make server`, the one-host tracking server: sized for a small machine, it keeps a client's
runs and artifacts; nothing lands in the client's local store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaectl import tracking

from .conftest import free_port, wait_until_up

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


def test_a_client_run_and_its_artifacts_land_on_the_server(tmp_path, tracking_server, monkeypatch, capfd):
    """The pipeline's whole path to a server runs on the team stack (tests/test_team.py)."""
    uri, store = tracking_server
    root = tmp_path / "client"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VAECTL_ROOT", str(root))
    with tracking.start_run("vaectl", "train-vae", {"vaectl.kind": "vae"}) as run:
        run.log_text("weights", "best.txt")
    assert [r.info.run_id for r in tracking.find_runs("vaectl")] == [run.run_id]
    printed = capfd.readouterr()
    # the run's link opens MLflow 3's training view; MLflow's own (GenAI view) is not printed
    assert f"MLflow run train-vae: {uri}/#/experiments/" in printed.err
    assert "?workflowType=machine_learning" in printed.err and "View run" not in printed.out
    assert [p.read_text() for p in (store / "artifacts").rglob("best.txt")] == ["weights"]
    assert not (root / "mlruns").exists()  # and the client kept no local store
