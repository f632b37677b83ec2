"""MLflow, in one place: the only module that imports mlflow.

Default store: sqlite under <repo>/mlruns (the file store is deprecated and the registry needs
a database), artifacts under <repo>/mlruns/artifacts. MLFLOW_TRACKING_URI points elsewhere
(a shared `mlflow server`). The repo root is VAECTL_ROOT when set, else the working
directory (DVC runs stages from the repo root).
"""

from __future__ import annotations

import contextlib
import io
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
    """Experiment id; a new experiment in a local sqlite store keeps its artifacts in an
    `artifacts` folder beside the database (mlruns/artifacts by default)."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None  # a tracking server decides its own artifact root
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a local database keeps its artifacts beside it
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
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


# ---------------------------------------------------------------- deployment: pyfunc + registry

PREDICT_DEFAULTS = {"mode": "reconstruct", "n": 16, "seed": 0}
ARTIFACTS = {  # pyfunc artifact key -> file written by `vaectl export`
    "encoder": "encoder.pt", "decoder": "decoder.pt", "reconstruct": "reconstruct.pt",
    "encoder_onnx": "encoder.onnx", "decoder_onnx": "decoder.onnx",
    "reconstruct_onnx": "reconstruct.onnx", "prior": "prior.npz", "model_card": "model_card.json",
    "model_card_md": "model_card.md", "checksums": "checksums.json",
}


# This module is imported only inside commands, never by `vaectl --help`. mlflow warns about
# missing predict type hints for its own loaders and for our class (whose signature is
# explicit), past any warning filter set from outside; keep that notice off the terminal.
with contextlib.redirect_stderr(io.StringIO()):
    import mlflow.pyfunc

    class AutoEncoderPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc over the exported TorchScript parts. Input: float32 N x 784 pixels in
        [0, 1] (the signature is 2-D, so MLflow rejects N x 28 x 28 before predict runs; the
        exported TorchScript parts take either, ONNX takes N x 784); `params={"mode": ...}` picks reconstruct
        (default), encode, decode (N x latent_dim latents) or sample (`n`, `seed`)."""

        def load_context(self, context):
            import torch

            art = context.artifacts
            with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.parts = {p: torch.jit.load(art[p], map_location="cpu")
                              for p in ("encoder", "decoder", "reconstruct")}
            prior = np.load(art["prior"])
            self.mean, self.chol = prior["mean"], prior["chol"]
            self.latent_dim = len(self.mean)

        def _bad(self, message: str):
            from mlflow.exceptions import MlflowException

            return MlflowException.invalid_parameter_value(message)

        def predict(self, context, model_input, params=None):
            import torch

            params = {**PREDICT_DEFAULTS, **(params or {})}
            mode = params["mode"]
            if mode not in ("reconstruct", "encode", "decode", "sample"):
                raise self._bad(f"unknown mode {mode!r}: use reconstruct, encode, decode or sample")
            if mode == "sample":
                rng = np.random.default_rng(int(params["seed"]))
                z = self.mean + rng.standard_normal((int(params["n"]), self.latent_dim)) @ self.chol.T
                with torch.no_grad():
                    return self.parts["decoder"](torch.from_numpy(z.astype(np.float32))).detach().numpy()
            x = np.asarray(model_input)
            if x.dtype.kind != "f":
                raise self._bad(f"expected float32 input, got {x.dtype}")
            if np.isnan(x).any() or np.isinf(x).any():
                raise self._bad("input contains NaN or infinite values")
            width = self.latent_dim if mode == "decode" else 784
            if x.ndim != 2 or x.shape[1] != width:
                raise self._bad(f"mode {mode} expects N x {width} input, got shape {x.shape}")
            if mode != "decode" and (x.min(initial=0) < 0 or x.max(initial=0) > 1):
                raise self._bad("pixel values must lie in [0, 1]")
            with torch.no_grad():
                part = self.parts[{"encode": "encoder", "decode": "decoder"}.get(mode, mode)]
            out = part(torch.from_numpy(x.astype(np.float32)))
            out = torch.cat(out, dim=1) if isinstance(out, tuple) else out
            return out.detach().numpy()


def _signature(example: np.ndarray):
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    any_width = TensorSpec(np.dtype(np.float32), (-1, -1))
    return ModelSignature(
        inputs=Schema([any_width]), outputs=Schema([any_width]),
        params=ParamSchema([ParamSpec("mode", "string", "reconstruct"), ParamSpec("n", "long", 16),
                            ParamSpec("seed", "long", 0)]))


def client():
    return _mlflow().MlflowClient()


def champion_metric(name: str, metric: str) -> float | None:
    """The `metric` tag of the current @champion of `name`, or None if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    value = version.tags.get(f"metric.{metric}")
    return float(value) if value is not None else None


def register_model(name: str, export_dir: Path, example: np.ndarray, experiment: str,
                   tags: dict[str, str], version_tags: dict[str, str]) -> str:
    """Log the pyfunc (with its exported parts) in a run of its own, register it as a new
    version of `name`, tag it, set alias `candidate`. Returns the version."""
    import torch

    mlflow = _mlflow()
    artifacts = {key: str(export_dir / filename) for key, filename in ARTIFACTS.items()}
    requirements = [f"mlflow=={mlflow.__version__}", f"torch>={torch.__version__.split('+')[0]}",
                    f"numpy>={np.__version__}", "pyyaml"]
    with start_run(experiment, f"register-{name}", tags) as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=AutoEncoderPyfunc(), artifacts=artifacts,
            signature=_signature(example), input_example=example, registered_model_name=name,
            pip_requirements=requirements, code_paths=[str(Path(__file__).parent)])
        run.log_artifact(export_dir / "model_card.md")
    version = str(info.registered_model_version)
    c = client()
    for key, value in version_tags.items():
        c.set_model_version_tag(name, version, key, value)
    c.set_registered_model_alias(name, "candidate", version)
    return version


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def resolve_model(ref: str) -> tuple[str, str]:
    """NAME@alias, NAME/version or NAME (= NAME@champion) -> (name, version); unknown names,
    aliases or versions are a UserError listing what exists."""
    from mlflow.exceptions import MlflowException

    from vaectl import UserError

    name, alias, version = ref, "champion", None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    c = client()
    known = sorted(m.name for m in c.search_registered_models())
    if name not in known:
        raise UserError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'}")
    model = c.get_registered_model(name)
    versions = sorted((str(v.version) for v in c.search_model_versions(f"name='{name}'")), key=int)
    if version is None:
        aliases = dict(model.aliases)
        if alias not in aliases:
            raise UserError(f"{name} has no alias {alias!r}; aliases: "
                            f"{', '.join(f'@{a} (v{v})' for a, v in sorted(aliases.items())) or 'none'}")
        version = str(aliases[alias])
    if version not in versions:
        raise UserError(f"{name} has no version {version!r}; versions: {', '.join(versions)}")
    try:
        c.get_model_version(name, version)
    except MlflowException as err:  # pragma: no cover - raced with a deletion
        raise UserError(f"{name}/{version}: {err.message}") from None
    return name, version


def download_model(name: str, version: str, dest: Path) -> Path:
    return Path(_mlflow().artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                        dst_path=str(dest)))


def load_pyfunc(uri: str):
    return _mlflow().pyfunc.load_model(uri)
