"""The MLflow model registry: register a version, aliases, resolve NAME@alias, download."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaectl import UserError
from vaectl.files import drop_bytecode, sha256_file, temporary_dir, tree_listing
from vaectl.tracking import (
    client,
    find_runs,
    log_model_metrics,
    mlflow_module,
    require_store,
    run_artifact,
    start_run,
    tracking_uri,
)
from vaectl.tracking.pyfunc import ARTIFACTS, BUNDLED_FILES, signature

# model version tags: the sha256 of the bundle's listing ({relative path: sha256} of every
# file), which the register run named by LISTING_RUN_TAG holds as artifact LISTING_ARTIFACT
BUNDLE_TAG = "bundle_sha256"
LISTING_RUN_TAG = "register_run_id"
LISTING_ARTIFACT = "bundle_sha256.json"

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


@dataclass(frozen=True)
class Registration:
    """One model version to register: what it is, its exported files (and their checked
    digests), its evidence.
    `evidence` = {'params': training settings, 'metrics': test numbers}; `test_data` =
    (images, labels, name, source) of the test set those numbers were measured on; `tags`
    go on the register run, `version_tags` on the version."""

    name: str
    kind: str
    export_dir: Path
    verified: dict[str, str]  # {file: sha256} of the export as it was checked before the upload
    example: np.ndarray
    training_run: str
    test_data: tuple
    tags: dict[str, str]
    version_tags: dict[str, str]
    evidence: dict
    description: str


def register_model(r: Registration, experiment: str) -> str:
    """Log the pyfunc (with its exported parts) as a LoggedModel whose source run is the
    training run, so the version's Source Run is the training run; register it as a new
    version of `r.name` (created with its register run's id, so that a registration killed
    before it is complete is known: see remove_interrupted), tag and describe it, and store the
    bundle's checksums (an artifact of the register run, its sha256 the version's tag). The
    caller points the aliases. Returns the version; one that fails or is interrupted before it
    is complete is deleted. The evidence goes on the register run and the logged model (its
    test numbers against the test set), so the Models tab compares versions by them."""
    import torch
    from mlflow.entities import LoggedModelOutput

    mlflow = mlflow_module()
    artifacts = {key: str(r.export_dir / filename) for key, filename in ARTIFACTS.items()}
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"torch>={torch.__version__.split('+')[0]}",
        f"numpy>={np.__version__}",
        "pyyaml",
    ]
    params = {k: str(v) for k, v in r.evidence["params"].items()}
    version = model_id = None
    try:
        with (
            start_run(experiment, f"register-{r.name}", r.tags) as run,
            temporary_dir("vaectl-code-") as code,
        ):
            model_file = _stage_model_code(Path(code))
            model_id = mlflow.initialize_logged_model(
                name=r.name, source_run_id=r.training_run, params=params, model_type=r.kind
            ).model_id
            info = mlflow.pyfunc.log_model(
                name=r.name,
                python_model=str(model_file),
                artifacts=artifacts,
                signature=signature(),
                input_example=r.example,
                pip_requirements=requirements,
                code_paths=[str(Path(code) / "vaectl")],
                model_id=model_id,
            )
            registered = mlflow.register_model(info.model_uri, r.name, tags={LISTING_RUN_TAG: run.run_id})
            version = str(registered.version)
            client().log_outputs(r.training_run, [LoggedModelOutput(model_id, step=0)])
            run.log_params(r.evidence["params"])
            test_set = run.dataset(*r.test_data)
            run.log_input(test_set, context="evaluation")
            log_model_metrics(model_id, r.evidence["metrics"], test_set)  # the run's and the model's
            run.log_artifact(r.export_dir / "model_card.md")
            c = client()
            for key, value in r.version_tags.items():
                c.set_model_version_tag(r.name, version, key, value)
            c.update_model_version(r.name, version, description=r.description)
            c.set_model_version_tag(
                r.name, version, BUNDLE_TAG, _log_bundle_listing(run, r.name, version, r.verified)
            )
    except BaseException:
        if version is not None:  # never a version without its bundle checksums
            client().delete_model_version(r.name, version)
        if model_id is not None:
            client().delete_logged_model(model_id)
        raise
    return version


STALE_AFTER_S = 3600  # a registration takes seconds: a lock this old was left by a killed one


def remove_interrupted(name: str, experiment: str) -> list[str]:
    """Delete the versions of `name` a killed `vaectl register` left (created with a register
    run's id, never given their bundle checksums) and end its runs as KILLED. Called under
    `registration_lock`, so no other registration is under way: every such version is stale.
    Versions registered by other means carry no register run id: never touched."""
    c = client()
    removed = []
    for v in c.search_model_versions(f"name='{name}'"):
        tags = v.tags or {}
        if LISTING_RUN_TAG in tags and BUNDLE_TAG not in tags:
            c.delete_model_version(name, v.version)
            removed.append(str(v.version))
    for run in find_runs(
        experiment, "attributes.status = 'RUNNING' and tags.`vaectl.kind` LIKE 'register-%'"
    ):
        c.set_terminated(run.info.run_id, "KILLED")
    return removed


def _stage_model_code(code: Path) -> Path:
    """The models-from-code script and the vaectl files it imports, under `code`."""
    package = Path(__file__).parents[1]
    for relative in BUNDLED_FILES:
        (code / "vaectl" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / relative, code / "vaectl" / relative)
    (code / "autoencoder_model.py").write_text(MODEL_CODE)
    return code / "autoencoder_model.py"


def _log_bundle_listing(run, name: str, version: str, verified: dict[str, str]) -> str:
    """{relative path: sha256} of the version's files as the artifact store holds them, checked
    against the export they were uploaded from and logged as this run's LISTING_ARTIFACT;
    returns the listing's own sha256 (the version's tag)."""
    with (
        temporary_dir("vaectl-bundle-") as tmp,
        temporary_dir("vaectl-listing-") as out,
    ):
        downloaded = download_model(name, version, Path(tmp))
        drop_bytecode(downloaded)  # Python's caches of the code MLflow loaded while logging
        listing = tree_listing(downloaded)
        _check_stored_artifacts(listing, verified, f"{name}/{version}")
        path = Path(out) / LISTING_ARTIFACT
        path.write_text(json.dumps(listing, sort_keys=True, indent=1))
        run.log_artifact(path)
        return sha256_file(path)


def _check_stored_artifacts(listing: dict[str, str], verified: dict[str, str], ref: str) -> None:
    """Each exported file as the store holds it is the one verified before the upload."""
    for filename in ARTIFACTS.values():
        if listing.get(f"artifacts/{filename}") != verified.get(filename):
            raise UserError(f"{ref}: the stored {filename} is not the file that was verified; register again")


def bundle_listing(name: str, version: str) -> str | None:
    """The bundle listing recorded when `name`/`version` was registered (JSON text), read from
    its register run and checked against the version's tag; None when it has none."""
    tags = client().get_model_version(name, version).tags
    recorded, run_id = tags.get(BUNDLE_TAG), tags.get(LISTING_RUN_TAG)
    if not recorded or recorded.startswith("{"):  # 0.1.0 held the listing in the tag itself
        return recorded
    with temporary_dir("vaectl-listing-") as tmp:
        try:
            path = run_artifact(run_id, LISTING_ARTIFACT, Path(tmp))
        except Exception:  # noqa: BLE001 - any store error: the listing is not there
            path = None
        if path is None or sha256_file(path) != recorded:
            raise UserError(
                f"{name}/{version}: the bundle checksums stored with register run {run_id} "
                "are missing or not the ones its version recorded; refusing to load it"
            )
        return path.read_text()


def complete_versions(name: str) -> list[int]:
    """Versions of `name` that carry their bundle checksums (registration finished)."""
    return sorted(
        int(v.version)
        for v in client().search_model_versions(f"name='{name}'")
        if BUNDLE_TAG in (v.tags or {})
    )


def point_candidate(name: str) -> None:
    """@candidate on the newest complete version, also when another `vaectl register` of the
    same name finishes meanwhile: set, read again, and set again until it holds."""
    c = client()
    for _ in range(10):
        newest = str(complete_versions(name)[-1])
        c.set_registered_model_alias(name, "candidate", newest)
        if str(complete_versions(name)[-1]) == newest:
            return
    raise UserError(
        f"{name}: @candidate kept moving under concurrent registrations; run `vaectl register` again"
    )


@contextlib.contextmanager
def registration_lock(timeout_s: float = 600) -> Iterator[None]:
    """One `vaectl register` at a time, so that champion's value is read and @champion moved
    without another registration between: on a local store a lock file beside its database,
    on a server or a shared database `store_lock`."""
    import fcntl

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        with store_lock(timeout_s):
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
                    raise UserError(
                        f"another `vaectl register` has held {lock} for {timeout_s:.0f} s; "
                        "wait for it, or remove the file if no register runs"
                    ) from None
                time.sleep(0.5)
        yield


LOCK_MODEL = "vaectl-register-lock"  # a registered model that exists while a register runs


@contextlib.contextmanager
def store_lock(timeout_s: float) -> Iterator[None]:
    """The store's own lock, for every client of a shared server: creating a registered model
    is atomic (its name is unique in the store), so the `vaectl register` that creates
    LOCK_MODEL holds it, and deletes it when it ends. One older than STALE_AFTER_S was left
    by a killed register and is taken over."""
    from mlflow.exceptions import MlflowException

    c, waited = client(), time.monotonic()
    while True:
        try:
            c.create_registered_model(LOCK_MODEL, description="held by a running `vaectl register`")
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with contextlib.suppress(MlflowException):  # released meanwhile: try again at once
            held_s = time.time() - c.get_registered_model(LOCK_MODEL).creation_timestamp / 1000
            if held_s > STALE_AFTER_S:
                c.delete_registered_model(LOCK_MODEL)
                continue
            if time.monotonic() - waited > timeout_s:
                raise UserError(
                    f"another `vaectl register` has held the registry lock (registered model "
                    f"{LOCK_MODEL}) for {held_s:.0f} s; wait, or delete that model if none runs"
                )
            time.sleep(0.5)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            c.delete_registered_model(LOCK_MODEL)


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

    require_store()
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
            raise UserError(
                f"{name} has no alias {alias!r}; aliases: "
                f"{', '.join(f'@{a} (v{v})' for a, v in sorted(aliases.items())) or 'none'}"
            )
        version = str(aliases[alias])
    if version not in versions:
        raise UserError(f"{name} has no version {version!r}; versions: {', '.join(versions)}")
    try:
        c.get_model_version(name, version)
    except MlflowException as err:  # pragma: no cover - raced with a deletion
        raise UserError(f"{name}/{version}: {err.message}") from None
    return name, version


def download_model(name: str, version: str, dest: Path) -> Path:
    return Path(
        mlflow_module().artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(dest)
        )
    )


def load_pyfunc(uri: str):
    return mlflow_module().pyfunc.load_model(uri)


def predict(model, x: np.ndarray, params: dict) -> np.ndarray:
    """The pyfunc's prediction; its input checks' refusals become one-line UserErrors."""
    from mlflow.exceptions import MlflowException

    try:
        return np.asarray(model.predict(x, params=params))
    except MlflowException as err:
        raise UserError(err.message.strip().splitlines()[0][:300]) from None
