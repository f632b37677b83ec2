"""The MLflow model registry: register a version, aliases, resolve NAME@alias, download."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.files import tree_listing
from vaectl.tracking import client, mlflow_module, start_run, tracking_uri
from vaectl.tracking.pyfunc import ARTIFACTS, BUNDLED_FILES, signature

BUNDLE_TAG = "bundle_sha256"  # model version tag: JSON {relative path: sha256} of every file

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
                   tags: dict[str, str], version_tags: dict[str, str], evidence: dict,
                   description: str) -> str:
    """Log the pyfunc (with its exported parts) in a run of its own, register it as a new
    version of `name`, tag it (the bundle's checksums among the tags), describe it, and only
    then point alias `candidate` at the newest complete version. Returns the version; one that
    fails or is interrupted before it is complete is deleted. `evidence` ({'params',
    'metrics'}: the training settings and test numbers) goes on the register run and on MLflow
    3's logged model, so the version's source run and model page show them."""
    import torch

    mlflow = mlflow_module()
    artifacts = {key: str(export_dir / filename) for key, filename in ARTIFACTS.items()}
    requirements = [f"mlflow=={mlflow.__version__}", f"torch>={torch.__version__.split('+')[0]}",
                    f"numpy>={np.__version__}", "pyyaml"]
    package = Path(__file__).parents[1]
    version = None
    try:
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
            version = str(info.registered_model_version)
            run.log_params(evidence["params"])
            mlflow.log_metrics(evidence["metrics"], model_id=info.model_id)  # the run's and the model's
            run.log_artifact(export_dir / "model_card.md")
            c = client()
            for key, value in version_tags.items():
                c.set_model_version_tag(name, version, key, value)
            with tempfile.TemporaryDirectory(prefix="vaectl-bundle-") as tmp:  # what was stored
                listing = tree_listing(download_model(name, version, Path(tmp)))
            c.update_model_version(name, version, description=description)
            c.set_model_version_tag(name, version, BUNDLE_TAG, json.dumps(listing, sort_keys=True))
    except BaseException:
        if version is not None:  # never a version without its bundle checksums
            client().delete_model_version(name, version)
        raise
    point_candidate(name)
    return version


def complete_versions(name: str) -> list[int]:
    """Versions of `name` that carry their bundle checksums (registration finished)."""
    return sorted(int(v.version) for v in client().search_model_versions(f"name='{name}'")
                  if BUNDLE_TAG in (v.tags or {}))


def point_candidate(name: str) -> None:
    """@candidate on the newest complete version, also when another `vaectl register` of the
    same name finishes meanwhile: set, read again, and set again until it holds."""
    c = client()
    for _ in range(10):
        newest = str(complete_versions(name)[-1])
        c.set_registered_model_alias(name, "candidate", newest)
        if str(complete_versions(name)[-1]) == newest:
            return
    raise UserError(f"{name}: @candidate kept moving under concurrent registrations; "
                    "run `vaectl register` again")


@contextlib.contextmanager
def registration_lock(timeout_s: float = 300) -> Iterator[None]:
    """One `vaectl register` at a time on a local store (a lock file beside its database), so
    that champion's value is read and @champion moved without another registration between;
    a tracking server serialises nothing, and `point_candidate` copes with that."""
    import fcntl

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///")).with_suffix(".register.lock")
    with open(lock, "a") as handle:
        waited = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - waited > timeout_s:
                    raise UserError(f"another `vaectl register` has held {lock} for {timeout_s:.0f} s; "
                                    "wait for it, or remove the file if no register runs") from None
                time.sleep(0.5)
        yield


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
