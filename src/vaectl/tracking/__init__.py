"""MLflow, in one place: this package is the only code that imports mlflow. Here: the
tracking store and runs; `pyfunc` holds the deployable model class, `registry_client` the
model registry.

Default store: where MLflow 3 itself looks when nothing is set, `sqlite:///mlflow.db` in the
repo root, so `mlflow ui`, `mlflow models serve -m models:/...` and `mlflow.pyfunc.load_model`
find it from there with no environment variable; artifacts under <repo>/mlruns/artifacts.
MLFLOW_TRACKING_URI points elsewhere (a shared `mlflow server`). The repo root is VAECTL_ROOT
when set, else the working directory (DVC runs stages from the repo root).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from vaectl import UserError, environment, numerics
from vaectl.files import temporary_dir
from vaectl.params import flatten


def repo_root() -> Path:
    return Path(os.environ.get("VAECTL_ROOT") or Path.cwd()).resolve()


STORE_FILE = "mlflow.db"  # MLflow 3's own default store is sqlite:///mlflow.db in the working directory
ARTIFACTS_DIR = Path("mlruns", "artifacts")  # beside a local database
FORMER_STORE = Path("mlruns", "mlflow.db")  # the default store before 2026-12-03


def default_tracking_uri() -> str:
    return f"sqlite:///{repo_root() / STORE_FILE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def refuse_former_store() -> None:
    """A clone whose runs and registry still sit in the former default store is told the one
    command that moves them, instead of silently starting an empty store beside them (the
    artifacts stay where they are, so their recorded locations stay valid)."""
    root = repo_root()
    if (
        not os.environ.get("MLFLOW_TRACKING_URI")
        and (root / FORMER_STORE).is_file()
        and not (root / STORE_FILE).exists()
    ):
        raise UserError(
            f"the local MLflow store moved from {FORMER_STORE} to {STORE_FILE}, where MLflow "
            f"looks by default: run `mv {FORMER_STORE} {STORE_FILE}` in {root}"
        )


# The stores MLflow 3 runs on (the file store is deprecated and refused), and how long a
# command may wait on a server: MLflow's own defaults (120 s per request, 7 retries with
# backoff) left `vaectl train` silent for 4 minutes against a dead server. Both env vars
# still win when set.
STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
SERVER_WAIT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3's UI: the runs/models/compare tabs
SERVER_PROBE_TIMEOUT_S = 5.0


def mlflow_module():
    """mlflow, pointed at this project's tracking store, which answers (checked once)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own "View run" link opens its GenAI view; start_run prints one to the training view
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for key, value in SERVER_WAIT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    refuse_former_store()
    uri = tracking_uri()
    check_store(uri)
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def masked(uri: str) -> str:
    """The URI as messages show it: a password in it replaced by ***, at most 200 characters."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            uri = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return uri if len(uri) <= 200 else uri[:200] + "..."


def check_database_driver(uri: str) -> None:
    """A database URI whose driver is not installed is one line naming it (SQLAlchemy would
    stop the first call with a ModuleNotFoundError): postgresql:// takes SQLAlchemy's default."""
    from sqlalchemy.engine import make_url

    try:
        make_url(uri).get_dialect().import_dbapi()
    except ImportError as err:
        raise UserError(
            f"MLFLOW_TRACKING_URI={masked(uri)!r} needs the Python database driver "
            f"{getattr(err, 'name', None) or err}, which is not installed: pip install it "
            "(e.g. psycopg[binary] for postgresql://, psycopg2-binary for postgresql+psycopg2://)"
        ) from None
    except Exception:  # noqa: BLE001 - a malformed URL: MLflow's own message says more
        return


def check_database_answers(uri: str) -> None:
    """A database that does not let us in within SERVER_PROBE_TIMEOUT_S is one line (MLflow
    would retry for minutes, logging each try with its traceback)."""
    import concurrent.futures

    from sqlalchemy import create_engine

    def connect() -> None:
        engine = create_engine(uri)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    probe = concurrent.futures.ThreadPoolExecutor(1)
    try:
        probe.submit(connect).result(SERVER_PROBE_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        reason = f"no answer within {SERVER_PROBE_TIMEOUT_S:g} s"
    except Exception as err:  # noqa: BLE001 - the driver's own reason, in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        password = urllib.parse.urlsplit(uri).password
        reason = reason.replace(password, "***") if password else reason
    else:
        return
    finally:
        probe.shutdown(wait=False)
    raise UserError(f"the database {masked(uri)} does not let MLflow in: {reason}")


@functools.cache
def check_store(uri: str) -> None:
    """Refuse, in one line and within SERVER_PROBE_TIMEOUT_S, a tracking URI MLflow cannot use
    or a server that does not answer, before any stage works for nothing."""
    shown = masked(uri)
    try:
        scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0].lower()
    except ValueError:  # not even a URL (e.g. an unclosed IPv6 bracket)
        scheme = ""
    if scheme not in STORE_SCHEMES:
        raise UserError(
            f"MLFLOW_TRACKING_URI={shown!r} is not a tracking store: give sqlite:///PATH, "
            "http(s)://HOST:PORT or a database URL, or unset it for the local "
            f"{default_tracking_uri()}"
        )
    if scheme in ("postgresql", "mysql", "mssql"):
        check_database_driver(uri)
        check_database_answers(uri)
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(health_request(uri), timeout=SERVER_PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answers (a proxy may want credentials for /health): the requests will tell
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"no MLflow tracking server answers at {shown} within "
            f"{SERVER_PROBE_TIMEOUT_S:g} s ({reason}): start it (`make server`) or unset "
            "MLFLOW_TRACKING_URI for the local store"
        ) from None


def health_request(uri: str) -> urllib.request.Request:
    """GET /health of a tracking server; credentials in the URI (which MLflow accepts) go in
    an Authorization header, as MLflow sends them, not in the URL urllib would refuse."""
    import base64

    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health"
    request = urllib.request.Request(url)
    if parts.username is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    return request


REQUEST_CAUSES = {  # urllib3's reason for a request that failed every try, as a user reads it
    "ReadTimeoutError": "the server took the request but did not answer in time (its log says why)",
    "NewConnectionError": "nothing answers at that address",
    "ConnectTimeoutError": "no connection in time",
}


def request_failure(text: str) -> str:
    """MLflow's message for a request that failed every retry, cut to the endpoint and the
    cause: the retry wrapper, the query string and the pool's repr say nothing more."""
    if "Caused by " not in text:
        return text
    endpoint = re.search(r"/api/[\w./-]+", text)
    cause = text.rsplit("Caused by ", 1)[1].rstrip(")")
    kind = cause.split("(", 1)[0]
    said = REQUEST_CAUSES.get(kind) or cause.split("(", 1)[-1].strip("'\"")
    return f"{endpoint.group(0) if endpoint else 'a request'}: {said}"


def store_failure(err: BaseException) -> str | None:
    """The one line for an error of the tracking store that reached a command (a server that
    died mid-run, a database another process holds), or None if `err` is something else."""
    from mlflow.exceptions import MlflowException

    text = request_failure(str(err).strip().splitlines()[0])[:300] if str(err).strip() else type(err).__name__
    with contextlib.suppress(ValueError):  # MLflow's messages quote the URI, password included
        password = urllib.parse.urlsplit(tracking_uri()).password
        text = text.replace(password, "***") if password else text
    if "database is locked" in str(err):
        return (
            f"the MLflow store {masked(tracking_uri())} is locked by another process (an `mlflow ui` "
            "or another vaectl writing to it): run this again when that is done"
        )
    kinds: list[type[Exception]] = [MlflowException]
    with contextlib.suppress(ImportError):
        import requests
        import sqlalchemy.exc

        kinds += [requests.exceptions.RequestException, sqlalchemy.exc.DatabaseError]  # a corrupt file too
    if isinstance(err, tuple(kinds)):
        return f"the MLflow tracking store {masked(tracking_uri())} failed: {text}"
    return None


def ensure_experiment(name: str) -> str:
    """Experiment id; a new experiment in a local sqlite store keeps its artifacts in
    `mlruns/artifacts` beside the database."""
    mlflow = mlflow_module()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None  # a tracking server decides its own artifact root
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a local database keeps its artifacts beside it
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
    from mlflow.exceptions import MlflowException

    try:
        # the experiment kind MLflow 3's UI reads to open an experiment on its training-run
        # tabs (runs, models, compare) instead of its GenAI ones
        return mlflow.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except MlflowException as err:  # another client made it meanwhile (a team's first runs)
        made = mlflow.get_experiment_by_name(name) if err.error_code == "RESOURCE_ALREADY_EXISTS" else None
        if made is None:
            raise
        return made.experiment_id


def dvc_experiment() -> str:
    """The DVC experiment this process runs in (`dvc exp run`, a queued trial of `vaectl
    study`: DVC names it in DVC_EXP_NAME), or "" in the workspace's own `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME", "")


def invoked_by() -> str:
    """Who ran the command that logs this run: `dvc exp run` (a DVC experiment, a study's trial
    among them), `dvc repro` (DVC sets DVC_STAGE in every stage's command), or a user by hand,
    so that an evaluation asked for again is not mistaken for the pipeline's."""
    if "DVC_STAGE" not in os.environ:
        return "by hand"
    return "dvc exp run" if dvc_experiment() else "dvc repro"


def source_name() -> str:
    """What ran, for MLflow's Source column: `vaectl train`, say. MLflow's own value is the
    script's absolute path (the venv's `vaectl`), which a shared server would keep for every
    member's machine."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if script not in ("vaectl", "__main__.py"):
        return script
    command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
    return f"vaectl {command}".strip()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo_root(), timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def standard_tags(kind: str, data_sha: str) -> dict[str, str]:
    """Tags every vaectl run carries; `vaectl.pipeline` groups the VAE and AE runs of one
    pipeline run (the DVC experiment, or code commit + data) so the UI compares them. The
    package versions, the lock they were installed from, the CPU and the numerics in force
    say what the run's bytes depended on."""
    commit = git_commit()
    exp_name = dvc_experiment()
    tags = {
        "vaectl.kind": kind,
        "mlflow.source.git.commit": commit,
        "vaectl.data_sha256": data_sha,
        "vaectl.pipeline": os.environ.get("VAECTL_PIPELINE") or exp_name or f"{commit[:12]}-{data_sha[:12]}",
        "vaectl.invoked_by": invoked_by(),
        "mlflow.source.name": source_name(),
    }
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    tags.update(environment.run_tags(repo_root() / environment.LOCK_FILE))
    tags.update({f"vaectl.{k}": v for k, v in numerics.in_force().items()})
    return tags


class Run:
    """What the stages log, without touching mlflow themselves."""

    def __init__(self, mlflow, run_id: str):
        self._mlflow, self.run_id = mlflow, run_id
        self.training_set = None  # a training run's dataset, for its LoggedModel's metrics

    def log_params(self, params: object) -> None:
        flat = flatten(params) if not isinstance(params, dict) else params
        self._mlflow.log_params({k: str(v) for k, v in flat.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """One image of a series: the UI shows a step slider per key. Logged synchronously:
        MLflow's background queue raised a store's failure in a thread at exit, and waited
        for it there (about a second of every interrupted or finished training)."""
        self._mlflow.log_image(image, key=key, step=step, synchronous=True)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def dataset(self, images: np.ndarray, labels: np.ndarray, name: str, source: str):
        """MLflow's record of a dataset (name, digest of the pixels, source), for log_input
        and for metrics measured on it."""
        with warnings.catch_warnings():  # mlflow registers the local source class twice
            warnings.filterwarnings("ignore", message="The specified dataset source")
            return self._mlflow.data.from_numpy(
                images.reshape(len(images), -1), targets=labels, source=source, name=name
            )

    def log_input(self, dataset, context: str) -> None:
        self._mlflow.log_input(dataset, context=context)

    def log_trained_model(
        self,
        name: str,
        files: list[Path],
        params: dict[str, object],
        tags: dict[str, str],
        metrics: dict[str, float],
        dataset,
    ) -> str:
        """MLflow 3's LoggedModel of this (training) run: the checkpoint files, the settings and
        the numbers measured on `dataset`, as the run's output, so that the experiment's Models
        tab lists and compares it (evaluate adds its test numbers). Returns its model id."""
        from mlflow.entities import LoggedModelOutput

        model = self._mlflow.initialize_logged_model(
            name=name,
            source_run_id=self.run_id,
            params={k: str(v) for k, v in params.items()},
            tags=tags,
            model_type=tags.get("vaectl.kind"),
        )
        mlflow_client = client()
        with temporary_dir("vaectl-model-") as staged:
            for path in files:
                shutil.copyfile(path, Path(staged) / path.name)
            mlflow_client.log_model_artifacts(model.model_id, staged)
        self._mlflow.finalize_logged_model(model.model_id, "READY")
        mlflow_client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        log_model_metrics(model.model_id, metrics, dataset)
        return model.model_id


def log_model_metrics(model_id: str, metrics: dict[str, float], dataset) -> None:
    """Metrics of a LoggedModel, measured on `dataset`, in the active run."""
    mlflow_module().log_metrics({k: float(v) for k, v in metrics.items()}, model_id=model_id, dataset=dataset)


@contextlib.contextmanager
def start_run(
    experiment: str, run_name: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[Run]:
    """Start (or, given run_id, resume) a run; it ends FINISHED, FAILED on an error, or
    KILLED on Ctrl-C / SIGTERM — never left RUNNING."""
    mlflow = mlflow_module()
    experiment_id = ensure_experiment(experiment)
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id else run_name,
        tags=tags,
    )
    try:
        yield Run(mlflow, active.info.run_id)
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    finally:
        link = run_link(experiment_id, active.info.run_id)
        if link:
            print(f"MLflow run {active.info.run_name}: {link}", file=sys.stderr)
    mlflow.end_run(status="FINISHED")


def run_link(experiment_id: str, run_id: str, ui: str | None = None) -> str | None:
    """The run's page in the UI at `ui` (default: the tracking server), in the training view;
    None for a local store without `ui` (no server to link to: `make ui` serves it)."""
    ui = ui or tracking_uri()
    if not ui.lower().startswith(("http://", "https://")):
        return None
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def run_status(run_id: str) -> str:
    return mlflow_module().get_run(run_id).info.status


def find_runs(experiment: str, filter_string: str = "") -> list:
    mlflow = mlflow_module()
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=filter_string,
        output_format="list",
        order_by=["attributes.start_time DESC"],
    )


def metric_history(run_id: str, key: str) -> list[float]:
    """A run's per-epoch values of `key` (timings live here, not in DVC-tracked files)."""
    history = client().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def require_store() -> None:
    """A local store that is not there is one line before anything reads from it: opening a
    mistyped path (or the default one outside the project) would create an empty store, and
    every lookup would then fail as if the files were forged."""
    refuse_former_store()  # the one store that is there, in its former place: say how to move it
    uri = tracking_uri()
    path = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not path.is_file():
        raise UserError(
            f"no MLflow store at {path}: run vaectl from the project root (where the pipeline "
            "made mlflow.db), or point MLFLOW_TRACKING_URI at the store that holds the runs"
        )


STORE_COUNT_CAP = 1000  # doctor counts runs and models up to this, then says "1000+"


def store_summary(experiment: str) -> str:
    """One line on the tracking store this project's commands would use (`vaectl doctor`):
    where it is and what it holds, read without creating one where none is; a store MLflow
    cannot read, or a server that does not answer, is a UserError naming it."""
    refuse_former_store()
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"{masked(uri)}: none yet (the first stage that runs creates it)"
    try:
        store = client()
        found = store.get_experiment_by_name(experiment)
        runs = store.search_runs([found.experiment_id], max_results=STORE_COUNT_CAP) if found else []
        models = store.search_registered_models(max_results=STORE_COUNT_CAP)
    except Exception as err:  # noqa: BLE001 - the store's own failure, in one line
        line = store_failure(err)
        if line is None:
            raise
        raise UserError(line) from None

    def counted(items, what: str) -> str:
        return f"{len(items)}{'+' if len(items) >= STORE_COUNT_CAP else ''} {what}"

    held = f"{counted(runs, 'runs')} in experiment {experiment!r}, {counted(models, 'registered models')}"
    return f"{masked(uri)}: {held}"


def latest_run(experiment: str, tags: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """(id, tags) of the newest run carrying all `tags`, or None. DVC-tracked files hold no
    run ids (they differ on every machine); they hold content hashes, and this finds the run
    behind one."""
    require_store()
    if mlflow_module().get_experiment_by_name(experiment) is None:
        return None
    # MLflow's filter grammar has no escape inside a quoted value: one holding ' is quoted
    # with ", one holding both is left out of the query; every tag is compared here anyway
    query = " and ".join(
        f"tags.`{k}` = '{v}'" if "'" not in v else f'tags.`{k}` = "{v}"'
        for k, v in tags.items()
        if "'" not in v or '"' not in v
    )
    runs = [r for r in find_runs(experiment, query) if all(r.data.tags.get(k) == v for k, v in tags.items())]
    return (runs[0].info.run_id, dict(runs[0].data.tags)) if runs else None


def latest_run_id(experiment: str, tags: dict[str, str]) -> str | None:
    found = latest_run(experiment, tags)
    return found[0] if found else None


def run_tags(run_id: str) -> dict[str, str]:
    return dict(client().get_run(run_id).data.tags)


def run_artifact(run_id: str, path: str, dest: Path) -> Path:
    """Download one artifact of a run into `dest` (a directory)."""
    return Path(
        mlflow_module().artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dest))
    )


def attach_artifacts(run_id: str, paths: list[Path]) -> None:
    """Add files to a finished run without reopening it (its status and duration stay)."""
    mlflow_client = client()
    for path in paths:
        mlflow_client.log_artifact(run_id, str(path))


def client():
    return mlflow_module().MlflowClient()


def nest_runs(parent_run_id: str, children: Mapping[str, Mapping[str, object]]) -> None:
    """Show finished runs under a parent in the UI (MLflow's parent tag) and give each the
    params that tell them apart there, e.g. a study's evaluate runs and their grid point."""
    from mlflow.entities import Param, RunTag

    mlflow_client = client()
    for run_id, params in children.items():
        mlflow_client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.parentRunId", parent_run_id), RunTag("vaectl.study", parent_run_id)],
        )
