"""The team stack on real servers (`make team-up`): PostgreSQL, SeaweedFS's S3 and an MLflow
server on both, started by `python -m vaectl.team up` on free loopback ports. The pipeline's
runs, artifacts and registry go there, a second clone pulls the champion without S3 keys, and
DVC pushes to the store and pulls into a third clone; each part's fault is one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from vaectl import UserError, team, tracking
from vaectl.pipeline import remote_summary

from .conftest import free_port
from .tiny import TINY_DEPLOY, train_to_registry

REPO = Path(__file__).resolve().parents[1]
VAECTL = [sys.executable, "-m", "vaectl"]


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports (SeaweedFS's inner ones)."""
    for _ in range(50):
        first = free_port()
        if first + count < 65535 and all(port_free(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def host_name() -> str:
    """This machine's own name where it resolves to loopback (a name MLflow does not allow
    unless told), else localhost."""
    name = socket.gethostname()
    try:
        return name if socket.gethostbyname(name).startswith("127.") else "localhost"
    except OSError:
        return "localhost"


def team_env(state: Path) -> dict[str, str]:
    """The stack's settings on free ports, the machine's name as the one clients use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAECTL_TEAM_", "AWS_", "MLFLOW_"))}
    env.update(
        VAECTL_TEAM_DIR=str(state),
        VAECTL_TEAM_HOST=host_name(),
        VAECTL_TEAM_PG_PORT=str(free_port()),
        VAECTL_TEAM_S3_PORT=str(free_port()),
        VAECTL_TEAM_MLFLOW_PORT=str(free_port()),
        VAECTL_TEAM_WEED_PORT=str(free_port_run(len(team.WEED_PORTS))),
    )
    return env


def team_command(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaectl.team", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def stack():
    """The stack up for this module, in a folder the `postgres` account can enter (pytest's
    own tmp folders are private to their owner), then down and removed. Without PostgreSQL
    installed they skip, except in CI (.ci/run installs it)."""
    try:
        team.executable("initdb")
    except UserError as missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(missing))
    home = Path(tempfile.mkdtemp(prefix="vaectl-team-"))
    home.chmod(0o755)
    env = team_env(home / "state")
    try:
        started = team_command("up", env, home)
        assert started.returncode == 0, started.stderr
        settings = team.settings(env, home)
        yield settings, env
    finally:
        stopped = team_command("down", env, home)
        shutil.rmtree(home, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def bucket_keys(settings: team.Settings, bucket: str) -> list[str]:
    creds = json.loads((settings.state / "credentials.json").read_text())
    listing = team.s3_client(settings.s3_endpoint, creds).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.e2e  # the stack's tests: real servers and subprocesses
def test_the_pipeline_tracks_to_the_team_server_and_a_second_clone_deploys_its_champion(
    stack, tmp_path, monkeypatch
):
    settings, env = stack
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("VAECTL_ROOT", str(tmp_path / "first"))
    deployed = train_to_registry(tmp_path / "first")
    assert deployed["first"]["vae"]["promoted"]
    assert {"vae", "ae", "evaluate"} <= {run.data.tags["vaectl.kind"] for run in tracking.find_runs("vaectl")}
    stored = {key.rsplit("/", 1)[-1] for key in bucket_keys(settings, team.MLFLOW_BUCKET)}
    assert {"best.pt", "reconstruct.onnx", "MLmodel"} <= stored  # the artifacts are in the store
    assert not (tmp_path / "first" / "mlruns").exists()  # and the clone kept none

    second = tmp_path / "second"
    second.mkdir()
    client_env = {k: v for k, v in env.items() if not k.startswith("VAECTL_TEAM_")}
    client_env.update(MLFLOW_TRACKING_URI=settings.tracking_uri, VAECTL_ROOT=str(second))
    for command in (
        ["pull", "vae-mnist@champion", "--dest", "deploy", "--quiet"],
        ["predict", "vae-mnist", "--input", str(deployed["prepared"] / "test.npz"), "--mode", "score"],
    ):
        done = subprocess.run(VAECTL + command, cwd=second, env=client_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr  # no S3 keys here: the server proxies artifacts
    assert (second / "deploy" / "artifacts" / "decoder.onnx").is_file()
    assert (second / "predictions.npz").is_file() and not (second / "mlruns").exists()
    two_registrations_at_once_take_turns(
        tmp_path / "first", {**client_env, "VAECTL_ROOT": str(tmp_path / "first")}
    )


def two_registrations_at_once_take_turns(root, env):
    """Two members' `vaectl register` of the same exports, started together against the
    server: the store's lock (a registered model only one can create) runs them one after
    the other, so each reads the champion the other left; the lock is gone after."""
    from vaectl.tracking import registry_client

    params = {**TINY_DEPLOY, "registry": {"require_smoother_than_baseline": False}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["register", "--prepared", str(root / "prepared"), "--exported", str(root / "export")]
    started = [
        subprocess.Popen(
            VAECTL + args + ["--report", str(root / f"r{i}.json")],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in started]
    assert [process.returncode for process in started] == [0, 0], outputs
    runs = [run.info for run in tracking.find_runs("vaectl", "tags.`vaectl.kind` LIKE 'register-%'")]
    last_four = sorted(runs, key=lambda run: run.start_time)[-4:]  # each process's vae and ae runs
    # one after another: no registration run starts before the one before it has ended
    pairs = zip(last_four[:-1], last_four[1:], strict=True)
    assert all(a.end_time <= b.start_time for a, b in pairs), last_four
    for run in last_four:  # what a member's machine looks like stays on it: no local path
        tags = tracking.run_tags(run.run_id)
        assert tags["mlflow.source.name"] == "vaectl register"
        assert not [key for key, value in tags.items() if str(root) in value or "/.venv/" in value], tags
    assert registry_client.resolve_model("vae-mnist@candidate") == ("vae-mnist", "3")
    assert registry_client.resolve_model("vae-mnist@champion") == ("vae-mnist", "1")  # not beaten
    assert registry_client.LOCK_MODEL not in {
        m.name for m in registry_client.client().search_registered_models()
    }


@pytest.mark.e2e
def test_the_server_answers_only_to_the_names_it_was_given(stack):
    settings, env = stack
    running = "PostgreSQL running, SeaweedFS running, MLflow server running"
    assert team.summary(env, settings.state.parent).endswith(
        f"{running}; its tracking URI: {settings.tracking_uri}"
    )
    url = f"http://127.0.0.1:{settings.mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1"
    for host, expected in (
        (f"{settings.host}:{settings.mlflow_port}", 200),
        (f"evil.test:{settings.mlflow_port}", 403),
    ):
        request = urllib.request.Request(url, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        assert status == expected, host


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def dvc_project(root: Path, env: dict[str, str]) -> Path:
    """A new git + DVC project at `root`, with no remote yet."""
    root.mkdir()
    git("init", "-q", cwd=root)
    dvc("init", "-q", cwd=root, env=env)
    return root


def commit(root: Path, message: str) -> None:
    git("add", ".", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message, cwd=root)


@pytest.mark.e2e
def test_dvc_pushes_to_the_store_and_another_clone_pulls_the_same_bytes(stack, tmp_path):
    settings, env = stack
    first = dvc_project(tmp_path / "first", env)
    (first / "data.bin").write_bytes(os.urandom(4096))
    dvc("add", "-q", "data.bin", cwd=first, env=env)
    commit(first, "data")
    configured = team_command("remote", env, first)
    assert configured.returncode == 0, configured.stderr
    secret = json.loads((settings.state / "credentials.json").read_text())["s3_secret_key"]
    assert secret not in configured.stdout + configured.stderr  # the keys go to config.local only
    dvc("push", "-q", cwd=first, env=env)
    assert bucket_keys(settings, team.DVC_BUCKET)  # the object is in the store

    third = tmp_path / "third"
    git("clone", "-q", str(first), str(third), cwd=tmp_path)
    assert team_command("remote", env, third).returncode == 0
    dvc("pull", "-q", cwd=third, env=env)
    assert (third / "data.bin").read_bytes() == (first / "data.bin").read_bytes()
    assert "up to date" in dvc("status", cwd=third, env=env)
    line, problem = remote_summary(third)
    assert not problem and line.endswith("answers"), line


@pytest.mark.e2e
def test_a_missing_bucket_or_wrong_keys_is_one_line_from_doctors_probe(stack, tmp_path):
    settings, env = stack
    clone = dvc_project(tmp_path / "clone", env)
    assert team_command("remote", env, clone).returncode == 0
    dvc("remote", "modify", "--local", "team", "url", "s3://no-such-bucket/cache", cwd=clone, env=env)
    line, problem = remote_summary(clone)
    assert problem and "bucket does not exist" in line and "\n" not in line, line
    dvc("remote", "modify", "--local", "team", "url", f"s3://{team.DVC_BUCKET}", cwd=clone, env=env)
    dvc("remote", "modify", "--local", "team", "secret_access_key", "wrong", cwd=clone, env=env)
    line, problem = remote_summary(clone)
    assert problem and "\n" not in line and "wrong" not in line, line


@pytest.mark.e2e
def test_a_database_that_stopped_is_one_line_for_a_client(stack, tmp_path):
    """Last in this module: it stops PostgreSQL under the running server, then starts it again."""
    settings, env = stack
    assert team.stop_postgres(settings)
    client_env = {k: v for k, v in env.items() if not k.startswith("VAECTL_TEAM_")}
    client_env.update(MLFLOW_TRACKING_URI=settings.tracking_uri, VAECTL_ROOT=str(tmp_path))
    try:
        done = subprocess.run(
            VAECTL + ["pull", "vae-mnist@champion", "--dest", "deploy"],
            cwd=tmp_path,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        assert team_command("up", env, settings.state.parent).returncode == 0
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# the settings and the state folder, without servers


def test_a_state_folder_holding_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a vaectl team stack's"):
        team.claim_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_credentials_are_made_once_private_and_a_different_one_later_is_refused(tmp_path):
    made = team.credentials(tmp_path, {})
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
    assert team.credentials(tmp_path, {}) == made
    with pytest.raises(UserError, match="VAECTL_TEAM_DB_PASSWORD differs") as refused:
        team.credentials(tmp_path, {"VAECTL_TEAM_DB_PASSWORD": "other-password"})
    assert "other-password" not in str(refused.value) and made["db_password"] not in str(refused.value)


def test_a_pid_file_whose_process_is_gone_or_reused_names_no_server(tmp_path):
    settings = team.settings({"VAECTL_TEAM_DIR": str(tmp_path)}, tmp_path)
    team.pid_file(settings, "mlflow").write_text(f"{os.getpid()} {team.started_at(os.getpid())}\n")
    assert team.running_pid(settings, "mlflow") == os.getpid()
    team.pid_file(settings, "mlflow").write_text(f"{os.getpid()} 1\n")  # this pid, another start
    assert team.running_pid(settings, "mlflow") is None
    assert not team.stop_server(settings, "mlflow")  # and nothing is signalled


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("VAECTL_TEAM_PG_PORT", "70000", "whole number from 1 to 65535"),
        ("VAECTL_TEAM_WEED_PORT", "65533", "SeaweedFS needs 7 ports"),
        ("VAECTL_TEAM_HOST", "a host; rm", "not a host name"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, variable, value, message):
    with pytest.raises(UserError, match=message):
        team.settings({variable: value}, tmp_path)


def test_a_missing_program_is_one_line_saying_how_to_install_it():
    with pytest.raises(UserError, match="needs `no-such-initdb`, which is not installed"):
        team.executable("no-such-initdb")


def test_the_remote_takes_any_key_keeps_it_out_of_messages_and_leaves_a_foreign_remote(tmp_path, capsys):
    (tmp_path / ".dvc").mkdir()
    settings = team.settings({"VAECTL_TEAM_DIR": str(tmp_path / "state")}, tmp_path)
    creds = {"s3_access_key": "-key", "s3_secret_key": "-secret-value"}  # a leading "-" is a value
    team.remote(settings, creds, tmp_path)
    local = (tmp_path / ".dvc" / "config.local").read_text()
    assert "access_key_id = -key" in local and "secret_access_key = -secret-value" in local
    assert "remote = team" in local and "-secret-value" not in capsys.readouterr().out
    written = local.replace("s3://vaectl-dvc", "s3://someone-else")
    (tmp_path / ".dvc" / "config.local").write_text(written)
    with pytest.raises(UserError, match="points at s3://someone-else, not the team store"):
        team.remote(settings, creds, tmp_path)
    assert (tmp_path / ".dvc" / "config.local").read_text() == written


def test_a_malformed_credentials_file_is_one_line_and_left_as_it_is(tmp_path):
    (tmp_path / "credentials.json").write_text('{"db_password": 1')
    with pytest.raises(UserError, match="credentials.json is malformed: restore it"):
        team.credentials(tmp_path, {})
    assert (tmp_path / "credentials.json").read_text() == '{"db_password": 1'


def test_doctors_line_on_the_stack_says_which_servers_run(tmp_path):
    assert team.summary({}, tmp_path) is None  # no stack was ever started here
    team.claim_state(tmp_path / ".team")
    stopped = "PostgreSQL stopped, SeaweedFS stopped, MLflow server stopped (`make team-up`)"
    assert team.summary({}, tmp_path) == f"{tmp_path / '.team'}: {stopped}"


def test_the_store_lock_waits_says_who_holds_it_and_takes_over_a_killed_ones(local_store, monkeypatch):
    """On any store (a local one here): a held lock makes the next register wait, then say in
    one line what to do; one older than STALE_AFTER_S (a killed register's) is taken over."""
    from vaectl.tracking import registry_client

    store = registry_client.client()
    store.create_registered_model(registry_client.LOCK_MODEL)  # another register holds it
    with pytest.raises(UserError, match="another `vaectl register` has held the registry lock"):
        with registry_client.store_lock(timeout_s=0.6):
            pass
    monkeypatch.setattr(registry_client, "STALE_AFTER_S", 0)  # ... and was killed
    with registry_client.store_lock(timeout_s=0.6):
        assert registry_client.LOCK_MODEL in {m.name for m in store.search_registered_models()}
    assert registry_client.LOCK_MODEL not in {m.name for m in store.search_registered_models()}
