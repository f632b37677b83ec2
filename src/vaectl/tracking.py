"""MLflow, in one place: the only module that imports mlflow.

Default store: sqlite under <repo>/mlruns (the file store is deprecated and the registry needs
a database), artifacts under <repo>/mlruns/artifacts. MLFLOW_TRACKING_URI points elsewhere
(a shared `mlflow server`). The repo root is VAECTL_ROOT when set, else the working
directory (DVC runs stages from the repo root).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vaectl.params import flatten


def repo_root() -> Path:
    return Path(os.environ.get("VAECTL_ROOT") or Path.cwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def ensure_experiment(name: str) -> str:
    """Experiment id; a new local experiment keeps its artifacts under mlruns/artifacts."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None  # a shared server decides its own artifact root
    if tracking_uri() == default_tracking_uri():  # (mlflow itself exports MLFLOW_TRACKING_URI)
        location = (repo_root() / "mlruns" / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=repo_root(), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def standard_tags(kind: str, data_sha: str) -> dict[str, str]:
    """Tags every vaectl run carries; `vaectl.pipeline` groups the VAE and AE runs of one
    pipeline run (the DVC experiment, or code commit + data) so the UI compares them."""
    commit = git_commit()
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    tags = {
        "vaectl.kind": kind,
        "mlflow.source.git.commit": commit,
        "vaectl.data_sha256": data_sha,
        "vaectl.pipeline": os.environ.get("VAECTL_PIPELINE")
        or exp_name
        or f"{commit[:12]}-{data_sha[:12]}",
    }
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    return tags


class Run:
    """What the stages log, without touching mlflow themselves."""

    def __init__(self, mlflow, run_id: str):
        self._mlflow, self.run_id = mlflow, run_id

    def log_params(self, params: object) -> None:
        flat = flatten(params) if not isinstance(params, dict) else params
        self._mlflow.log_params({k: str(v) for k, v in flat.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self._mlflow.log_image(image, artifact_file=name)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def log_dataset(self, images: np.ndarray, labels: np.ndarray, name: str, source: str,
                    context: str) -> None:
        with warnings.catch_warnings():  # mlflow registers the local source class twice
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = self._mlflow.data.from_numpy(
                images.reshape(len(images), -1), targets=labels, source=source, name=name)
        self._mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def start_run(experiment: str, run_name: str, tags: dict[str, str],
              run_id: str | None = None) -> Iterator[Run]:
    """Start (or, given run_id, resume) a run; it ends FINISHED, FAILED on an error, or
    KILLED on Ctrl-C / SIGTERM — never left RUNNING."""
    mlflow = _mlflow()
    experiment_id = ensure_experiment(experiment)
    active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                              run_name=None if run_id else run_name, tags=tags)
    try:
        yield Run(mlflow, active.info.run_id)
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def run_status(run_id: str) -> str:
    return _mlflow().get_run(run_id).info.status


def find_runs(experiment: str, filter_string: str = "") -> list:
    mlflow = _mlflow()
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string,
                              output_format="list")
