"""The MLflow model registry: register a version, aliases, resolve NAME@alias, download."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.tracking import client, mlflow_module, start_run
from vaectl.tracking.pyfunc import ARTIFACTS, BUNDLED_FILES, signature

# MLflow's models-from-code: a registered version holds this script (and the bundled vaectl
# files), which MLflow runs to build the model when it loads it, instead of a pickled object.
MODEL_CODE = '''"""vaectl's deployable model, built by MLflow when it loads this version."""
import mlflow.models

from vaectl.tracking.pyfunc import AutoEncoderPyfunc

mlflow.models.set_model(AutoEncoderPyfunc())
'''


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
                   tags: dict[str, str], version_tags: dict[str, str], evidence: dict) -> str:
    """Log the pyfunc (with its exported parts) in a run of its own, register it as a new
    version of `name`, tag it, set alias `candidate`. Returns the version. `evidence`
    ({'params', 'metrics'}: the training settings and test numbers) goes on the register run
    and on MLflow 3's logged model, so the version's source run and model page show them."""
    import torch

    mlflow = mlflow_module()
    artifacts = {key: str(export_dir / filename) for key, filename in ARTIFACTS.items()}
    requirements = [f"mlflow=={mlflow.__version__}", f"torch>={torch.__version__.split('+')[0]}",
                    f"numpy>={np.__version__}", "pyyaml"]
    package = Path(__file__).parents[1]
    with start_run(experiment, f"register-{name}", tags) as run, \
            tempfile.TemporaryDirectory(prefix="vaectl-code-") as code:
        for relative in BUNDLED_FILES:
            (Path(code) / "vaectl" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package / relative, Path(code) / "vaectl" / relative)
        (Path(code) / "autoencoder_model.py").write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(code) / "autoencoder_model.py"), artifacts=artifacts,
            signature=signature(), input_example=example, registered_model_name=name,
            pip_requirements=requirements, code_paths=[str(Path(code) / "vaectl")],
            params={k: str(v) for k, v in evidence["params"].items()})
        run.log_params(evidence["params"])
        mlflow.log_metrics(evidence["metrics"], model_id=info.model_id)  # the run's and the model's
        run.log_artifact(export_dir / "model_card.md")
    version = str(info.registered_model_version)
    c = client()
    for key, value in version_tags.items():
        c.set_model_version_tag(name, version, key, value)
    c.set_registered_model_alias(name, "candidate", version)
    return version


def describe_version(name: str, version: str, text: str) -> None:
    client().update_model_version(name, version, description=text)


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, version, key, value)


def version_tag(name: str, version: str, key: str) -> str | None:
    return client().get_model_version(name, version).tags.get(key)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def resolve_model(ref: str) -> tuple[str, str]:
    """NAME@alias, NAME/version or NAME (= NAME@champion) -> (name, version); unknown names,
    aliases or versions are a UserError listing what exists."""
    from mlflow.exceptions import MlflowException

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
    return Path(mlflow_module().artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                        dst_path=str(dest)))


def load_pyfunc(uri: str):
    return mlflow_module().pyfunc.load_model(uri)


def predict(model, x: np.ndarray, params: dict) -> np.ndarray:
    """The pyfunc's prediction; its input checks' refusals become one-line UserErrors."""
    from mlflow.exceptions import MlflowException

    try:
        return np.asarray(model.predict(x, params=params))
    except MlflowException as err:
        raise UserError(err.message.strip().splitlines()[0][:300]) from None
