"""The team stack on one host (`make team-up`, `make team-down`; docs/deployment.md):
PostgreSQL holds MLflow's runs and registry, SeaweedFS (the real `weed` server, S3 API) holds
MLflow's artifacts and the DVC remote, and an MLflow server on both proxies the artifacts, so
a client needs only its URI. Each part is a real server, started here on the host's own
binaries, its state in one folder.

Every setting is read in `settings()`, from the environment. The credentials are taken from
the environment or made once, into the state folder (mode 600): never from git, never printed.

Threat model: the servers listen on `VAECTL_TEAM_BIND` (loopback by default) for a team that
trusts its network; the database and the store want their passwords, the MLflow server answers
only to the host names it is told (DNS rebinding) and takes no login of its own (put a proxy
with one in front of it beyond a trusted network). The state folder is the stack's own: one
that holds anything else is refused, and `down` stops only processes that name it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vaectl import UserError
from vaectl.files import atomic_path

SYSTEM_PROGRAMS = "/usr/sbin:/sbin"  # runuser and ip live here, often off a user's PATH
MARKER = ".vaectl-team"  # the file that makes a state folder the stack's own
DATABASE, DB_USER = "mlflow", "vaectl"
MLFLOW_BUCKET, DVC_BUCKET = "vaectl-mlflow", "vaectl-dvc"
REGION = "us-east-1"  # SeaweedFS ignores it; boto3 and DVC want one
REMOTE_NAME = "team"
START_TIMEOUT_S = {"PostgreSQL": 60.0, "SeaweedFS": 60.0, "MLflow server": 180.0}
STOP_TIMEOUT_S = 20.0
# the flags of the ports SeaweedFS uses inside, given consecutive ports from weed_port
WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)


@dataclass(frozen=True)
class Settings:
    """Where the stack keeps its state, where it listens and the name clients reach it by."""

    state: Path
    host: str  # the name in the URIs clients use; the MLflow server answers to it only
    bind: str  # the address every server listens on
    pg_port: int
    s3_port: int
    mlflow_port: int
    weed_port: int  # the first of len(WEED_PORTS) consecutive ports SeaweedFS uses inside
    workers: int  # the MLflow server's web workers

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def weed_port_of(self, part: str) -> int:
        return self.weed_port + WEED_PORTS.index(part)


# setting: (environment variable, default); the state folder defaults to <project>/.team
SETTINGS_ENV = {
    "state": ("VAECTL_TEAM_DIR", ".team"),
    "host": ("VAECTL_TEAM_HOST", "127.0.0.1"),
    "bind": ("VAECTL_TEAM_BIND", "127.0.0.1"),
    "pg_port": ("VAECTL_TEAM_PG_PORT", "5433"),
    "s3_port": ("VAECTL_TEAM_S3_PORT", "8333"),
    "mlflow_port": ("VAECTL_TEAM_MLFLOW_PORT", "5002"),
    "weed_port": ("VAECTL_TEAM_WEED_PORT", "19333"),
    "workers": ("VAECTL_TEAM_WORKERS", "1"),
}
# credential: environment variable (else made at the first `up`, kept in the state folder)
CREDENTIALS_ENV = {
    "db_password": "VAECTL_TEAM_DB_PASSWORD",
    "s3_access_key": "VAECTL_TEAM_S3_ACCESS_KEY",
    "s3_secret_key": "VAECTL_TEAM_S3_SECRET_KEY",
}


def settings(environ: Mapping[str, str], root: Path) -> Settings:
    """The stack's settings from `environ` (SETTINGS_ENV), each checked; a relative state
    folder is under `root`, the project."""
    values: dict[str, object] = {}
    for field, (variable, default) in SETTINGS_ENV.items():
        text = environ.get(variable) or default
        if field == "state":
            values[field] = (root / text).resolve()
        elif field in ("host", "bind"):
            if not text.replace(".", "").replace("-", "").replace(":", "").isalnum():
                raise UserError(f"{variable}={text!r} is not a host name or address")
            values[field] = text
        else:
            values[field] = bounded_int(variable, text, top=65535 if field != "workers" else 64)
    found = Settings(**values)  # type: ignore[arg-type]
    if found.weed_port + len(WEED_PORTS) > 65536:
        raise UserError(
            f"VAECTL_TEAM_WEED_PORT={found.weed_port}: SeaweedFS needs {len(WEED_PORTS)} ports from it"
        )
    return found


def bounded_int(variable: str, text: str, top: int) -> int:
    if not text.isdigit() or not 1 <= int(text) <= top:
        raise UserError(f"{variable}={text!r}: give a whole number from 1 to {top}")
    return int(text)


def credentials(state: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The stack's passwords and keys: made at its first start (or taken from the environment)
    and kept in the state folder; later a different one in the environment is refused, since
    the database and the store already hold the first."""
    path = state / "credentials.json"
    given = {key: environ[variable] for key, variable in CREDENTIALS_ENV.items() if environ.get(variable)}
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except ValueError:
            kept = None
        if not (isinstance(kept, dict) and all(isinstance(kept.get(key), str) for key in CREDENTIALS_ENV)):
            raise UserError(
                f"{path} is malformed: restore it (the database and the store hold the keys it "
                "had), or start afresh with a new VAECTL_TEAM_DIR"
            )
        for key, value in given.items():
            if kept.get(key) != value:
                raise UserError(
                    f"{CREDENTIALS_ENV[key]} differs from the one the stack in {state} was made "
                    "with: unset it, or `make team-down` and remove that folder to start afresh"
                )
        return kept
    made = {key: given.get(key) or secrets.token_hex(24) for key in CREDENTIALS_ENV}  # no leading "-"
    made["s3_access_key"] = given.get("s3_access_key") or "vaectl" + secrets.token_hex(8)
    write_private(path, json.dumps(made, indent=2) + "\n")
    return made


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads, whole or not at all (files.atomic_path)."""
    with atomic_path(path) as staged:
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(text)


def claim_state(state: Path) -> None:
    """The state folder: made here, or one made here before; never a folder with other files."""
    if state.exists() and not state.is_dir():
        raise UserError(f"the team state folder {state} is a file: set VAECTL_TEAM_DIR to a folder")
    if state.is_dir() and any(state.iterdir()) and not (state / MARKER).is_file():
        raise UserError(
            f"{state} holds files that are not a vaectl team stack's: set VAECTL_TEAM_DIR to "
            "an empty or new folder"
        )
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / MARKER).touch()


def executable(name: str) -> str:
    """A program of the stack: this environment's own first (mlflow, weed), then PATH, then
    Debian's PostgreSQL folders (their programs are not on PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_PROGRAMS)
    if found:
        return found
    debian = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if debian:
        return str(debian[-1])
    hint = {"initdb": "apt-get install postgresql", "pg_ctl": "apt-get install postgresql"}.get(
        name, "make setup (the team extra)" if name in ("weed", "mlflow", "dvc") else f"install {name}"
    )
    raise UserError(f"the team stack needs `{name}`, which is not installed: {hint}")


def check_port_free(port: int, part: str) -> None:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise UserError(f"port {port} ({part}) is in use: set another in its VAECTL_TEAM_*_PORT")


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there it runs as the `postgres` account."""
    return [executable("runuser"), "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run_quietly(command: list[str], what: str, timeout_s: float = 120.0) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise UserError(f"{what} failed: {reason[:300]}")


def postgres_data(s: Settings) -> Path:
    return s.state / "postgres"


def postgres_running(s: Settings) -> bool:
    data = postgres_data(s)
    if not (data / "PG_VERSION").is_file():
        return False
    status = subprocess.run(
        as_postgres([executable("pg_ctl"), "-D", str(data), "status"]), capture_output=True
    )
    return status.returncode == 0


def start_postgres(s: Settings, creds: dict[str, str]) -> None:
    """PostgreSQL on loopback (only the MLflow server beside it connects), passwords required."""
    data = postgres_data(s)
    if not (data / "PG_VERSION").is_file():
        prepare_postgres_folder(data)
        password_file = s.state / ".initial-password"  # initdb wants its folder empty
        write_private(password_file, creds["db_password"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres")
        init = [executable("initdb"), "-D", str(data), "-U", DB_USER, "--auth=scram-sha-256"]
        try:
            run_quietly(
                as_postgres([*init, f"--pwfile={password_file}", "-E", "UTF8", "--locale=C.UTF-8"]), "initdb"
            )
        finally:
            password_file.unlink(missing_ok=True)
    check_port_free(s.pg_port, "PostgreSQL")
    options = f"-p {s.pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    start = [executable("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60"]
    run_quietly(as_postgres([*start, "-o", options, "start"]), f"PostgreSQL (its log: {data / 'server.log'})")
    create_database(s, creds)


def prepare_postgres_folder(data: Path) -> None:
    """An empty data folder the server's account owns, inside a state folder it can enter."""
    if data.exists() and any(data.iterdir()):
        raise UserError(f"{data} is half-made (initdb did not finish): remove it, then run this again")
    data.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() != 0:
        return
    try:
        shutil.chown(data, "postgres", "postgres")
    except LookupError:
        raise UserError(
            "PostgreSQL runs as the account `postgres`, which this host lacks: apt-get install postgresql"
        ) from None
    if subprocess.run(as_postgres(["test", "-w", str(data)])).returncode != 0:
        raise UserError(
            f"the account `postgres` cannot reach {data}: set VAECTL_TEAM_DIR to a folder "
            "whose parents others may enter (e.g. under /srv or /var/tmp)"
        )


def create_database(s: Settings, creds: dict[str, str]) -> None:
    import psycopg

    login = f"host=127.0.0.1 port={s.pg_port} user={DB_USER} dbname=postgres connect_timeout=10"
    try:
        with psycopg.connect(login, password=creds["db_password"], autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                db.execute(f"CREATE DATABASE {DATABASE}")
    except psycopg.Error as err:
        raise UserError(f"PostgreSQL on port {s.pg_port}: {str(err).strip().splitlines()[0][:300]}") from None


def stop_postgres(s: Settings) -> bool:
    if not postgres_running(s):
        return False
    stop = [executable("pg_ctl"), "-D", str(postgres_data(s)), "-m", "fast", "-w", "-t", "60", "stop"]
    run_quietly(as_postgres(stop), "stopping PostgreSQL")
    return True


def pid_file(s: Settings, name: str) -> Path:
    return s.state / f"{name}.pid"


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def started_at(pid: int) -> str:
    """When a process started (clock ticks since boot): with its pid, it names one process."""
    return proc_stat(pid)[19]


def running_pid(s: Settings, name: str) -> int | None:
    """The pid of the stack's `name` server if it still runs: the pid file's process, started
    when the file says (a pid reused since belongs to someone else and is left alone)."""
    try:
        pid, start = pid_file(s, name).read_text().split()
        return int(pid) if started_at(int(pid)) == start else None
    except (OSError, ValueError):
        return None


def launch(s: Settings, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A server in its own session, its output in logs/NAME.log, its pid in NAME.pid."""
    with open(s.state / "logs" / f"{name}.log", "ab") as log:  # the child keeps its own copy
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    pid_file(s, name).write_text(f"{server.pid} {started_at(server.pid)}\n")
    return server


def wait_until(ready: Callable[[], bool], server: subprocess.Popen, part: str, log: Path) -> None:
    """Until `ready()`; a server that exits or overstays START_TIMEOUT_S is one line with the
    last line of its log."""
    deadline = time.monotonic() + START_TIMEOUT_S[part]
    while not ready():
        if server.poll() is not None or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
            state = f"exited ({server.returncode})" if server.poll() is not None else "did not answer in time"
            last = f": {lines[-1][:300]}" if lines else ""
            raise UserError(f"{part} {state}, see {log}{last}")
        time.sleep(0.25)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers, if only to say no
    except OSError:
        return False


def start_seaweedfs(s: Settings, creds: dict[str, str]) -> None:
    """SeaweedFS's all-in-one server: S3 on s3_port, its own parts on weed_port and up; one
    identity, the stack's key pair, may do anything; the two buckets made if missing."""
    check_port_free(s.s3_port, "SeaweedFS S3")
    for flag in WEED_PORTS:
        check_port_free(s.weed_port_of(flag), f"SeaweedFS {flag}")
    identity = {
        "name": "vaectl-team",
        "credentials": [{"accessKey": creds["s3_access_key"], "secretKey": creds["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_private(s.state / "s3.json", json.dumps({"identities": [identity]}))
    (s.state / "seaweedfs").mkdir(exist_ok=True)
    ports = [f"-{flag}={s.weed_port_of(flag)}" for flag in WEED_PORTS]
    own_ip = "127.0.0.1" if s.bind in ("0.0.0.0", "::") else s.bind
    command = [
        executable("weed"),
        "mini",
        f"-dir={s.state / 'seaweedfs'}",
        f"-ip={own_ip}",
        f"-ip.bind={s.bind}",
    ]
    command += ports + [f"-s3.port={s.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"]
    command += ["-admin.ui=false", f"-s3.config={s.state / 's3.json'}", "-master.telemetry=false"]
    server = launch(s, "seaweedfs", command, dict(os.environ))
    endpoint = f"http://127.0.0.1:{s.s3_port}"
    wait_until(lambda: answers(endpoint), server, "SeaweedFS", s.state / "logs" / "seaweedfs.log")
    make_buckets(endpoint, creds)


def s3_client(endpoint: str, creds: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["s3_access_key"],
        aws_secret_access_key=creds["s3_secret_key"],
        region_name=REGION,
    )


def make_buckets(endpoint: str, creds: dict[str, str]) -> None:
    store = s3_client(endpoint, creds)
    there = {bucket["Name"] for bucket in store.list_buckets().get("Buckets", [])}
    for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
        if bucket not in there:
            store.create_bucket(Bucket=bucket)


def start_mlflow(s: Settings, creds: dict[str, str]) -> None:
    """MLflow's server on the database and the store, proxying artifacts (clients need no S3
    credentials), answering only to the names clients use, with no job runners."""
    check_port_free(s.mlflow_port, "MLflow server")
    names = dict.fromkeys([s.host, "127.0.0.1", "localhost"])
    allowed = ",".join(f"{name}:{s.mlflow_port}" for name in names)
    command = [executable("mlflow"), "server", "--host", s.bind, "--port", str(s.mlflow_port)]
    command += ["--workers", str(s.workers), "--allowed-hosts", allowed]
    command += ["--backend-store-uri", f"postgresql+psycopg://{DB_USER}@127.0.0.1:{s.pg_port}/{DATABASE}"]
    command += ["--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"]
    env = dict(
        os.environ, PGPASSWORD=creds["db_password"], MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{s.s3_port}"
    )
    env.update(AWS_ACCESS_KEY_ID=creds["s3_access_key"], AWS_SECRET_ACCESS_KEY=creds["s3_secret_key"])
    env.update(AWS_DEFAULT_REGION=REGION, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = launch(s, "mlflow", command, env)
    health = f"http://127.0.0.1:{s.mlflow_port}/health"
    wait_until(lambda: answers(health), server, "MLflow server", s.state / "logs" / "mlflow.log")


def alive(pid: int) -> bool:
    """A process that has not exited (a zombie awaiting its parent has)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


def stop_server(s: Settings, name: str) -> bool:
    """SIGTERM to the server's session, SIGKILL after STOP_TIMEOUT_S; False if it was not running."""
    pid = running_pid(s, name)
    pid_file(s, name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True


@dataclass(frozen=True)
class Part:
    name: str
    running: Callable[[Settings], bool]
    start: Callable[[Settings, dict[str, str]], None]
    stop: Callable[[Settings], bool]


PARTS = (  # in the order they start; they stop in reverse
    Part("PostgreSQL", postgres_running, start_postgres, stop_postgres),
    Part(
        "SeaweedFS",
        lambda s: running_pid(s, "seaweedfs") is not None,
        start_seaweedfs,
        lambda s: stop_server(s, "seaweedfs"),
    ),
    Part(
        "MLflow server",
        lambda s: running_pid(s, "mlflow") is not None,
        start_mlflow,
        lambda s: stop_server(s, "mlflow"),
    ),
)


def up(s: Settings, environ: Mapping[str, str], root: Path, echo=print) -> None:
    """Start what is not running; on a failure, stop again what this call started."""
    claim_state(s.state)
    creds = credentials(s.state, environ)
    started: list[Part] = []
    try:
        for part in PARTS:
            if part.running(s):
                echo(f"{part.name}: already running")
                continue
            part.start(s, creds)
            started.append(part)
            echo(f"{part.name}: started")
    except BaseException:
        for part in reversed(started):
            part.stop(s)
        raise
    echo(f"MLflow tracking server: export MLFLOW_TRACKING_URI={s.tracking_uri}")
    echo(
        f"S3 store (SeaweedFS): {s.s3_endpoint}, buckets {MLFLOW_BUCKET} (MLflow's artifacts) "
        f"and {DVC_BUCKET} (DVC)"
    )
    if (root / ".dvc").is_dir():
        remote(s, creds, root, echo)


def down(s: Settings, echo=print) -> None:
    if not (s.state / MARKER).is_file():
        raise UserError(f"no team stack in {s.state} (VAECTL_TEAM_DIR): nothing to stop")
    for part in reversed(PARTS):
        echo(f"{part.name}: {'stopped' if part.stop(s) else 'was not running'}")


def remote(s: Settings, creds: dict[str, str], root: Path, echo=print) -> None:
    """The store's DVC bucket as this clone's default remote, written with DVC's own config
    code into .dvc/config.local, which git ignores (the keys with it); a remote of that name
    that points elsewhere is left alone."""
    from dvc.config import Config, ConfigError

    from vaectl.tracking import masked

    if not (root / ".dvc").is_dir():
        raise UserError(f"{root} is not a DVC project: run this in a clone of vaectl")
    url = f"s3://{DVC_BUCKET}"
    try:
        config = Config(str(root / ".dvc"))
        other = config["remote"].get(REMOTE_NAME, {}).get("url", url)
        if other != url:
            raise UserError(
                f"this clone's DVC remote {REMOTE_NAME!r} points at {masked(other)}, not the team "
                f"store: remove it (`dvc remote remove {REMOTE_NAME}`) or keep it"
            )
        with config.edit("local") as local:
            local.setdefault("core", {})["remote"] = REMOTE_NAME
            local.setdefault("remote", {})[REMOTE_NAME] = {
                "url": url,
                "endpointurl": s.s3_endpoint,
                "region": REGION,
                "access_key_id": creds["s3_access_key"],
                "secret_access_key": creds["s3_secret_key"],
            }
    except ConfigError as err:
        raise UserError(f"{root / '.dvc'}: {str(err).splitlines()[0][:300]}") from None
    echo(
        f"DVC remote {REMOTE_NAME!r} -> {url} at {s.s3_endpoint} (keys in .dvc/config.local): "
        "now dvc push / dvc pull"
    )


def summary(environ: Mapping[str, str], root: Path) -> str | None:
    """One line on the team stack in this project's state folder (`vaectl doctor`): which
    parts run; None where no stack was ever started there."""
    s = settings(environ, root)
    if not (s.state / MARKER).is_file():
        return None
    running = {}
    for part in PARTS:
        try:
            running[part.name] = part.running(s)
        except UserError:  # e.g. pg_ctl gone since: it cannot be running
            running[part.name] = False
    parts = ", ".join(f"{name} {'running' if up else 'stopped'}" for name, up in running.items())
    uri = f"; its tracking URI: {s.tracking_uri}" if all(running.values()) else " (`make team-up`)"
    return f"{s.state}: {parts}{uri}"


def known_credentials(s: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The stack's keys for a clone: from its state folder on this host, else the environment."""
    if (s.state / "credentials.json").is_file():
        return credentials(s.state, environ)
    given = {key: environ.get(variable, "") for key, variable in CREDENTIALS_ENV.items()}
    if not (given["s3_access_key"] and given["s3_secret_key"]):
        raise UserError(
            f"no team stack in {s.state}: on another host set VAECTL_TEAM_S3_ACCESS_KEY and "
            "VAECTL_TEAM_S3_SECRET_KEY (the stack's, from its credentials.json) and VAECTL_TEAM_HOST"
        )
    return given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaectl.team", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "remote", "uri"])
    command = parser.parse_args(argv).command
    root = Path(os.environ.get("VAECTL_ROOT") or Path.cwd()).resolve()
    try:
        s = settings(os.environ, root)
        if command == "up":
            up(s, os.environ, root)
        elif command == "down":
            down(s)
        elif command == "remote":
            remote(s, known_credentials(s, os.environ), root)
        else:
            print(s.tracking_uri)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
