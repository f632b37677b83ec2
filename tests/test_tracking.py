"""The tracking store as a user's machine may have it: a wrong URI, a server that is not
there, hangs or fails, a database another process holds. Each is one line and exit 1 within
a bound, never a traceback or minutes of silence."""

import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from vaectl import tracking

from .conftest import free_port

TINY = {"model": {"hidden": [16]}, "train": {"device": "cpu", "ae": {"latent_dim": 2, "epochs": 1}}}


def train_ae(tmp_path, prepared, uri):
    (tmp_path / "params.yaml").write_text(json.dumps(TINY))
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "train", "--model", "ae", "--prepared", str(prepared)],
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "VAECTL_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    return out, time.monotonic() - began


def assert_one_line(out, message):
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("uri", ["garbage", "file:///tmp/mlruns", "ftp://example.com/store", "http://[bad"])
def test_a_uri_that_is_no_tracking_store_is_refused(tmp_path, prepared, uri):
    out, _ = train_ae(tmp_path, prepared, uri)
    assert_one_line(out, f"MLFLOW_TRACKING_URI={uri!r} is not a tracking store")


def test_nothing_listening_is_refused_at_once(tmp_path, prepared):
    out, took = train_ae(tmp_path, prepared, f"http://127.0.0.1:{free_port()}")
    assert_one_line(out, "no MLflow tracking server answers at http://127.0.0.1:")
    assert took < 60  # MLflow's own retries waited 240 s


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a hung or stopped server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_answers_is_refused_after_the_probe_timeout(tmp_path, prepared, silent_server):
    out, took = train_ae(tmp_path, prepared, silent_server)
    assert_one_line(out, f"no MLflow tracking server answers at {silent_server} within 5 s")
    assert took < 60


class FailingAPI(http.server.BaseHTTPRequestHandler):
    """Healthy on /health, 503 on every API call: a server whose backend died after the
    probe, which MLflow retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES) and then gives up on."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_):
        pass


def test_a_server_failing_after_the_probe_is_one_line_within_its_retries(tmp_path, prepared):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        out, took = train_ae(tmp_path, prepared, uri)
    finally:
        server.shutdown()
    assert_one_line(
        out, f"the MLflow tracking store {uri} failed: /api/2.0/mlflow/experiments/get-by-name: too many 503"
    )
    assert took < 120  # MLflow's defaults retried for about 5 minutes


def test_a_database_another_process_holds_is_one_line(tmp_path, prepared):
    db = tmp_path / "mlflow.db"
    out, _ = train_ae(tmp_path, prepared, f"sqlite:///{db}")  # creates the store
    assert out.returncode == 0, out.stderr
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out, _ = train_ae(tmp_path, prepared, f"sqlite:///{db}")
    finally:
        holder.close()
    assert_one_line(out, "is locked by another process")


def test_a_corrupt_store_a_missing_driver_and_a_closed_database_are_one_line_without_the_password(
    tmp_path, prepared
):
    (tmp_path / "mlflow.db").write_bytes(b"not a database " * 100)
    out, _ = train_ae(tmp_path, prepared, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_one_line(out, "failed: ")
    out, _ = train_ae(tmp_path, prepared, "postgresql+psycopg2://team:secretpw@127.0.0.1:1/mlflow")
    assert_one_line(out, "needs the Python database driver psycopg2")
    assert "secretpw" not in out.stderr and "team:***@127.0.0.1" in out.stderr
    out, _ = train_ae(tmp_path, prepared, "postgresql://team:secretpw@127.0.0.1:1/mlflow")
    assert_one_line(out, "the database postgresql://team:***@127.0.0.1:1/mlflow does not let MLflow in: ")
    assert "secretpw" not in out.stderr


def test_credentials_in_a_server_uri_go_in_a_header_and_never_in_a_message(tmp_path, prepared):
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(503)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, _ = train_ae(tmp_path, prepared, f"http://team:secretpw@127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert seen and seen[0] == "Basic dGVhbTpzZWNyZXRwdw=="  # team:secretpw
    assert_one_line(out, "the MLflow tracking store http://team:***@127.0.0.1:")
    assert "secretpw" not in out.stderr


@pytest.mark.parametrize("value", ["/data/o'brien", '/data/say "hi"', '/data/it\'s "odd"', "C:\\runs\\a"])
def test_a_run_is_found_by_a_tag_holding_quotes_or_backslashes(local_store, value):
    with tracking.start_run("quotes", "this", {"vaectl.out_dir": value, "k": "1"}) as run:
        pass
    with tracking.start_run("quotes", "newer", {"vaectl.out_dir": value + "x", "k": "1"}):
        pass
    found = tracking.latest_run("quotes", {"vaectl.out_dir": value, "k": "1"})
    assert found is not None and found[0] == run.run_id
    assert tracking.latest_run("quotes", {"vaectl.out_dir": value, "k": "2"}) is None


@pytest.mark.parametrize("uri", [None, "sqlite:///{root}/mlfow.db"])  # outside a project; mistyped
def test_reading_from_a_store_that_is_not_there_creates_none_and_is_one_line(tmp_path, uri):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VAECTL_ROOT")}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri.format(root=tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", "vae-mnist@champion", "--dest", "d"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line(out, "no MLflow store at")
    assert list(tmp_path.iterdir()) == []


def test_a_request_that_failed_every_try_is_cut_to_its_endpoint_and_cause():
    """MLflow's own text for a server whose database stopped (it held the request until the
    client gave up), as a client received it."""
    said = (
        "API request to http://127.0.0.1:45002/api/2.0/mlflow/registered-models/search failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=45002): Max retries exceeded with url: "
        "/api/2.0/mlflow/registered-models/search?filter=tag.%60mlflow.prompt.is_prompt%60&max_results=100 "
        "(Caused by ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', port=45002): Read timed out. "
        '(read timeout=30)"))'
    )
    assert tracking.request_failure(said) == (
        "/api/2.0/mlflow/registered-models/search: the server took the request but did not answer "
        "in time (its log says why)"
    )
    refused = said.split(" (Caused by ")[0] + " (Caused by ResponseError('too many 500 error responses'))"
    assert tracking.request_failure(refused) == (
        "/api/2.0/mlflow/registered-models/search: too many 500 error responses"
    )
    assert tracking.request_failure("RESOURCE_DOES_NOT_EXIST: no run") == "RESOURCE_DOES_NOT_EXIST: no run"


def test_an_experiment_another_client_made_meanwhile_is_used_not_a_crash(local_store, monkeypatch):
    """Two team members' first runs on a new server both find no experiment and both create
    it; the second create fails with RESOURCE_ALREADY_EXISTS (benchmarks/team_load.py met it)."""
    mlflow = tracking.mlflow_module()
    made = mlflow.create_experiment("shared")
    real = mlflow.get_experiment_by_name
    looks = iter([None])  # the first look misses it, as it did before the other client made it
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: next(looks, real(name)))
    assert tracking.ensure_experiment("shared") == made
