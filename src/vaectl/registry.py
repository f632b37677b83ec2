"""`vaectl register`, `pull` and `predict`: the MLflow model registry, with aliases, not stages.

predict: batch scoring of an .npz/.npy or a folder of PNGs through a verified bundle's pyfunc.
register: each exported model becomes a new version (tags: test metrics, data sha, git commit,
DVC experiment), alias `candidate`; `champion` moves only when the promotion rule holds.
pull: NAME[@alias|/version] -> a deploy bundle whose every file (MLmodel, bundled code,
requirements, artifacts) is checked against the sha256s recorded in the registry when the
version was registered, before anything in it runs; then loaded once as a smoke test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaectl import UserError, custody
from vaectl.files import (
    atomic_path,
    check_destination,
    drop_bytecode,
    read_json,
    sha256_file,
    temporary_dir,
    tree_listing,
    write_json,
)
from vaectl.metric_table import PROMOTION, headline, measure
from vaectl.params import PIXELS, PREDICT_MODES, RegistryParams
from vaectl.report import flatten_model_metrics, verdict_word


@dataclass
class Decision:
    promote: bool
    reason: str


def promotion_decision(
    kind: str, metrics: dict, champion_value: float | None, rule: RegistryParams
) -> Decision:
    """The promotion rule: beat the current champion's primary metric by more than
    `rule.min_improvement` nats (any value beats no champion) and, for the VAE when
    `rule.require_smoother_than_baseline`, have the verdict "better" on
    `rule.smoothness_metric`: the 95% interval of the VAE/AE ratio lies below 1 and the 90%
    interval is not inside the metric's equivalence margin (report.bootstrap_verdict)."""
    metric = PROMOTION[kind]
    value = metrics[kind][metric]
    if kind == "vae" and rule.require_smoother_than_baseline:
        c = metrics["comparison"][rule.smoothness_metric]
        if c["verdict"] != "better":
            return Decision(
                False,
                f"VAE/AE {rule.smoothness_metric} = {c['ratio']:.3f} (95% interval "
                f"{c['ratio_ci'][0]:.3f}-{c['ratio_ci'][1]:.3f}): {verdict_word(c)}, not "
                "VAE better, so the VAE is not promoted for smoothness",
            )
    if champion_value is None:
        return Decision(True, f"no champion yet; {metric} {value:.3f}")
    better = value < champion_value - rule.min_improvement
    # six significant digits, so that close values show where they differ (0.0004 nats, say)
    return Decision(
        better,
        f"{metric} {value:.6g} {'beats' if better else 'does not beat'} champion's "
        f"{champion_value:.6g} by more than {rule.min_improvement}",
    )


def version_description(
    kind: str, metrics: dict, decision: Decision, training_run: str | None, evaluate_run: str | None
) -> str:
    """What the registry UI shows for a version: its headline test numbers (every number is on
    its logged model), the promotion decision and where the evidence is (the training and
    evaluate runs)."""
    own = flatten_model_metrics(metrics[kind])
    lines = [f"{kind.upper()} on {metrics['test_images']} test images ({metrics['protocol']}).", ""]
    for name in headline(kind):
        m = measure(name)
        lines.append(f"- {m.label} (`{name}`): {own[name]:.4g}{' ' + m.unit if m.unit else ''}")
    lines += [
        "",
        "Every test number is on this version's logged model (the experiment's Models tab).",
        "",
        f"@champion: {'promoted' if decision.promote else 'not promoted'}: {decision.reason}.",
    ]
    if training_run:
        lines.append(f"Training run: {training_run}.")
    if evaluate_run:
        lines.append(f"Evaluate run (VAE-vs-AE table with intervals, figures, report page): {evaluate_run}.")
    return "\n".join(lines)


def exported_model(export_dir: Path, kind: str, experiment: str) -> tuple[dict, dict, dict[str, str]]:
    """(model card, the export run's tags, {file: sha256} of every file as verified) of
    export_dir, after checking its checksums.json against the digest the export run recorded
    and every file against checksums.json."""
    _, export_tags = custody.recorded_run(
        export_dir / "checksums.json", custody.CHECKSUMS, experiment, f"export-{kind}"
    )
    verified = {
        **verify_export(export_dir),  # before anything of it is read, the card included
        "checksums.json": export_tags[custody.CHECKSUMS.tag],
    }
    card = read_json(
        export_dir / "model_card.json",
        "vaectl export",
        ("model", "checkpoint_sha256", "data_manifest_sha256", "architecture", "binarize", "best_val_loss"),
    )
    if card["model"] != kind or card["checkpoint_sha256"] != export_tags[custody.EXPORTED_CHECKPOINT]:
        raise UserError(
            f"{export_dir} holds a {card['model']} export of checkpoint "
            f"{str(card['checkpoint_sha256'])[:12]}…, not the {kind} its export run recorded; "
            f"{custody.CHECKSUMS.fix}"
        )
    return card, export_tags, verified


def evaluated_metrics(evaluate_run: str, kind: str, checkpoint_sha: str) -> dict:
    """metrics.json as the evaluate run logged it (its artifact, checked against the digest the
    run recorded), provided that run scored this very checkpoint."""
    from vaectl import tracking

    tags = tracking.run_tags(evaluate_run)
    if tags.get(custody.SCORED[kind]) != checkpoint_sha:
        raise UserError(
            f"evaluate run {evaluate_run} did not score the exported {kind} checkpoint "
            f"{checkpoint_sha[:12]}…; run `vaectl evaluate` and `vaectl export` again"
        )
    with temporary_dir("vaectl-metrics-") as tmp:
        path = tracking.run_artifact(evaluate_run, "metrics.json", Path(tmp))
        if sha256_file(path) != tags.get(custody.METRICS.tag):
            raise UserError(
                f"the metrics.json stored with evaluate run {evaluate_run} is not the one it "
                "recorded; run `vaectl evaluate` again"
            )
        return read_json(path, "vaectl evaluate", ("protocol", "test_images", "vae", "ae", "comparison"))


def _registration(
    kind: str,
    name: str,
    export: tuple[dict, dict, dict[str, str]],
    export_dir: Path,
    example: np.ndarray,
    test_data: tuple,
):
    """(the Registration of one export, without its description; the evaluate run's metrics):
    a few headline test numbers as version tags, all of them on the logged model."""
    from vaectl import tracking
    from vaectl.tracking import registry_client

    card, export_tags, verified = export
    evaluate_run, training_run = export_tags[custody.EVALUATE_RUN], export_tags["vaectl.training_run_id"]
    metrics = evaluated_metrics(evaluate_run, kind, card["checkpoint_sha256"])
    tags = {
        **tracking.standard_tags(f"register-{kind}", card["data_manifest_sha256"]),
        "vaectl.training_run_id": training_run,
        "vaectl.evaluate_run_id": evaluate_run,
    }
    test_metrics = flatten_model_metrics(metrics[kind])
    version_tags = {
        **{f"metric.{k}": str(test_metrics[k]) for k in headline(kind)},
        "data_sha256": card["data_manifest_sha256"],
        "git_commit": tags["mlflow.source.git.commit"],
        "checkpoint_sha256": card["checkpoint_sha256"],
        "protocol": metrics["protocol"],
        "ood_score": card["score"]["score"],
        "ood_threshold": str(card["score"]["threshold"]),
        "ood_quantile": str(card["score"]["quantile"]),
        "training_run_id": training_run,
        "evaluate_run_id": evaluate_run,
        **({"dvc_exp_name": tags["dvc.exp_name"]} if "dvc.exp_name" in tags else {}),
    }
    evidence = {
        "params": {**card["architecture"], "binarize": card["binarize"]},
        "metrics": {f"test.{k}": float(v) for k, v in test_metrics.items() if k != "iw_k"}
        | {"best_val_loss": card["best_val_loss"]},
    }
    return registry_client.Registration(
        name, kind, export_dir, verified, example, training_run, test_data, tags, version_tags, evidence, ""
    ), metrics


# Registering is the workspace pipeline's job: a `dvc exp run` or a study trial that made a
# version per run would fill the registry with models nobody chose (and an unchanged AE again).
IN_EXPERIMENT = (
    "not registered: DVC experiments register nothing; `dvc exp apply NAME && dvc repro "
    "-f register` registers an experiment's models"
)


REGISTERED = (
    "registered as a new version, @candidate: its number and whether @champion moved are the "
    "MLflow registry's (`vaectl pull NAME@candidate`)"
)


def register(
    rule: RegistryParams, export_root: Path, prepared: Path, experiment: str, report_path: Path
) -> dict:
    """Register each export as a new version, its promotion decided on the test metrics of the
    evaluate run that scored that very checkpoint, read from MLflow (custody.py); inside a DVC
    experiment, check the exports and register nothing (IN_EXPERIMENT)."""
    with temporary_dir("vaectl-register-") as snapshot:
        # one private copy, verified and then uploaded: a file changed in export/ after the check
        # is never what gets registered
        for kind in ("vae", "ae"):
            copy_export(export_root / kind, Path(snapshot) / kind)
        return _register_snapshot(rule, Path(snapshot), prepared, experiment, report_path)


def copy_export(source: Path, dest: Path) -> None:
    """An export folder's plain files copied (links and anything else are refused)."""
    if not source.is_dir():
        raise UserError(f"{source} not found; it is written by `vaectl export` ({custody.CHECKSUMS.fix})")
    dest.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise UserError(
                f"{entry} is not a plain file; `vaectl export` writes only files ({custody.CHECKSUMS.fix})"
            )
        shutil.copyfile(entry, dest / entry.name)


def _register_snapshot(
    rule: RegistryParams, export_root: Path, prepared: Path, experiment: str, report_path: Path
) -> dict:
    from vaectl import tracking
    from vaectl.data import load_split, split_label
    from vaectl.tracking import registry_client

    names = {"vae": rule.vae_name, "ae": rule.ae_name}
    exports = {kind: exported_model(export_root / kind, kind, experiment) for kind in names}
    if tracking.dvc_experiment():  # the exports were still checked: a broken one fails the trial
        report: dict[str, dict] = {
            kind: {"name": name, "version": None, "aliases": [], "promoted": False, "reason": IN_EXPERIMENT}
            for kind, name in names.items()
        }
        write_json(report_path, registration_record(names, exports, IN_EXPERIMENT))
        return report
    test_data = (*load_split(prepared, "test"), *split_label(prepared, "test"))
    example = test_data[0][:2].reshape(2, -1).astype(np.float32) / 255
    with registry_client.registration_lock():
        for name in names.values():
            registry_client.remove_interrupted(name, experiment)
        registered = _register_pair(rule, names, exports, export_root, example, test_data, experiment)
        report = {}
        for kind, (version, decision) in registered.items():  # aliases move once both are in
            registry_client.point_candidate(names[kind])
            if decision.promote:
                registry_client.set_alias(names[kind], "champion", version)
            report[kind] = {
                "name": names[kind],
                "version": version,
                "aliases": ["candidate"] + (["champion"] if decision.promote else []),
                "promoted": decision.promote,
                "reason": decision.reason,
            }
    write_json(report_path, registration_record(names, exports, REGISTERED))
    return report


def registration_record(names: dict[str, str], exports: dict, outcome: str) -> dict[str, dict]:
    """reports/registry.json, a DVC output: which checkpoint went in under which name, or why
    none did. The version numbers and the promotion follow the store's history, so they stay
    in the store (and in what `vaectl register` prints): here each member of a team sharing one
    server would rewrite dvc.lock with every registration."""
    return {
        kind: {
            "name": name,
            "checkpoint_sha256": exports[kind][0]["checkpoint_sha256"],
            "registered": outcome == REGISTERED,
            "outcome": outcome,
        }
        for kind, name in names.items()
    }


def _register_pair(
    rule: RegistryParams,
    names: dict[str, str],
    exports: dict,
    export_root: Path,
    example: np.ndarray,
    test_data: tuple,
    experiment: str,
) -> dict[str, tuple[str, Decision]]:
    """{kind: (new version, promotion decision)} for the VAE and the AE, registered as a pair:
    when the second fails or is interrupted, the first's new version is deleted too, so that a
    registration lands whole or not at all (no @candidate from two registrations)."""
    from vaectl.tracking import registry_client

    registered: dict[str, tuple[str, Decision]] = {}
    try:
        for kind, name in names.items():
            registration, metrics = _registration(
                kind, name, exports[kind], export_root / kind, example, test_data
            )
            champion_value = registry_client.champion_metric(name, PROMOTION[kind])
            decision = promotion_decision(kind, metrics, champion_value, rule)
            description = version_description(
                kind,
                metrics,
                decision,
                registration.training_run,
                registration.tags["vaectl.evaluate_run_id"],
            )
            version = registry_client.register_model(
                dataclasses.replace(registration, description=description), experiment
            )
            registered[kind] = (version, decision)
    except BaseException:
        for kind, (version, _) in registered.items():
            registry_client.client().delete_model_version(names[kind], version)
        raise
    return registered


def verify_export(export_dir: Path) -> dict[str, str]:
    """Every file of the export is listed in its checksums.json with its sha256, and nothing
    listed is missing: an emptied or partial listing verifies nothing, so it is refused.
    Returns the listing."""
    listed = read_json(export_dir / "checksums.json", "vaectl export")
    present = {p.name for p in export_dir.iterdir() if p.name != "checksums.json"}
    unlisted = sorted(present - set(listed))
    if unlisted or not listed:
        raise UserError(
            f"{export_dir}/checksums.json does not list {', '.join(unlisted) or 'any file'}; export again"
        )
    for filename, digest in listed.items():
        path = export_dir / filename
        if not path.is_file() or sha256_file(path) != digest:
            raise UserError(f"{path} is missing or changed since `vaectl export`; export again")
    return listed


def verify_bundle(root: Path, recorded: str | None, ref: str) -> int:
    """Check the downloaded bundle against the listing recorded at registration: no file
    missing, added or changed. Returns how many files were checked."""
    if not recorded:
        raise UserError(f"{ref} was registered without bundle checksums; register it again")
    found = tree_listing(root)  # `root` holds no __pycache__ (download_verified drops them)
    expected = {  # a listing recorded with bytecode on holds caches too: never run, not checked
        path: digest for path, digest in json.loads(recorded).items() if "__pycache__" not in path.split("/")
    }
    problems = (
        [f"missing {p}" for p in sorted(set(expected) - set(found))]
        + [f"unexpected {p}" for p in sorted(set(found) - set(expected))]
        + [f"changed {p}" for p in sorted(set(found) & set(expected)) if found[p] != expected[p]]
    )
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UserError(
            f"{ref}: the stored bundle differs from what was registered ({shown}); refusing to load it"
        )
    return len(found)


def download_verified(ref: str, into: Path, echo=lambda line: None) -> tuple[str, str, Path, int]:
    """NAME[@alias|/version] downloaded under `into` and checked file by file:
    (name, version, bundle directory, files checked). `echo` hears the fetch once the name
    resolved (a store or name that is not there stays a one-line error)."""
    from vaectl.tracking import registry_client

    name, version = registry_client.resolve_model(ref)
    echo(f"fetching {name} v{version} ({ref}) from the registry and checking its files")
    downloaded = registry_client.download_model(name, version, into)
    drop_bytecode(downloaded)  # caches of a load from the store in place: never run
    recorded = registry_client.bundle_listing(name, version)
    checked = verify_bundle(downloaded, recorded, f"{name}/{version}")
    return name, version, downloaded, checked


PULLED = "pulled.json"  # what `pull` writes beside the bundle: the version and its files
PULLED_MAX_BYTES = 1 << 20


def pull(ref: str, dest: Path, echo=lambda line: None) -> dict:
    """Download NAME[@alias|/version] into `dest` (atomically), verify, load once. `dest` is
    new, empty or an earlier pull's bundle (its pulled.json lists every file in it); `echo`
    hears each step."""
    from vaectl.tracking import registry_client

    check_destination(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} is a file; give a folder (it is replaced atomically)")
    with (
        atomic_path(dest, claim=earlier_pull) as staged,
        temporary_dir("vaectl-pull-") as tmp,
    ):
        name, version, downloaded, checked = download_verified(ref, Path(tmp), echo)
        echo(f"loading {name} v{version} ({checked} files verified) for a smoke prediction")
        model = registry_client.load_pyfunc(str(downloaded))
        card = json.loads((downloaded / "artifacts" / "model_card.json").read_text())
        probe = np.full((1, 784), 0.5, dtype=np.float32)
        output = model.predict(probe)
        if output.shape != (1, 784) or not np.isfinite(output).all():
            raise UserError(f"{name}/{version} loaded but its smoke prediction is malformed")
        try:
            shutil.copytree(downloaded, staged)
        except shutil.Error as err:  # copytree gathers each file's OSError into one list
            why = err.args[0][0][2] if err.args and err.args[0] else str(err)
            raise UserError(f"--dest {dest}: the bundle could not be copied ({why})") from None
        summary = {
            "name": name,
            "version": version,
            "dest": str(dest),
            "files_verified": checked,
            "model": card["model"],
            "test_metrics": card["test_metrics"],
            "files": tree_listing(staged),
        }
        write_json(staged / PULLED, summary)
    return summary


def earlier_pull(dest: Path) -> str | None:
    """What in folder `dest` an earlier `vaectl pull` did not write (by its pulled.json's
    listing), or None: the only folder besides an empty one that pull replaces."""
    entries = sorted(dest.rglob("*"))
    if not entries:
        return None
    listing = dest / PULLED
    try:
        if listing.is_symlink() or listing.stat().st_size > PULLED_MAX_BYTES:
            raise ValueError
        files = json.loads(listing.read_text())["files"]
        if not isinstance(files, dict):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        return f"{entries[0].relative_to(dest)} and no {PULLED} of `vaectl pull` listing its files"
    for entry in entries:
        relative = entry.relative_to(dest).as_posix()
        if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
            return f"{relative} (not a plain file)"
        if entry.is_file() and relative != PULLED and relative not in files:
            return relative
    return None


# What `vaectl predict` reads: bounded before anything is decoded or allocated. A row is one
# image or latent; memory is these rows (memory-mapped for .npy) plus one batch and the output.
PREDICT_MAX_ROWS = 100_000
PREDICT_BATCH_ROWS = 4096
PNG_MAX_BYTES = 1 << 20  # a 28 x 28 PNG is under 2 kB


def read_inputs(path: Path, mode: str) -> tuple[np.ndarray, list[str] | None, str]:
    """(rows for the pyfunc, PNG file names or None, where the rows came from in words) from
    an .npz (its one array, `x`, or `images` as `vaectl fetch` writes), an .npy, or a folder
    of 28 x 28 PNGs, each checked against the bounds above from its header. uint8 pixels (and
    PNGs) are divided by 255; float arrays go to the pyfunc's own checks."""
    if path.is_dir():
        rows, names = read_pngs(path)
        return rows, names, f"{len(names):,} PNGs in {path}"
    if not path.exists():
        raise UserError(f"input not found: {path}")
    x, member = _read_array(path, _regular_file(path).st_size)
    if x.dtype.kind != "f" and x.dtype != np.uint8:  # float pixels or latents, or uint8 pixels
        raise UserError(
            f"{path}: {x.dtype} values; give floats (pixels in [0, 1] or latents) or uint8 pixels (0-255)"
        )
    if x.dtype == np.uint8 and mode == "decode":  # a latent is a real vector, never a byte image
        raise UserError(f"{path}: uint8 latents; decode takes float latents")
    source = f"array {member} of {path}" if member else str(path)
    return x, None, source  # uint8 pixels are divided by 255 batch by batch, as the rows are scored


def _regular_file(path: Path) -> os.stat_result:
    """The file's stat; a FIFO or device named like an input would block or never end, so it
    is refused unopened, and a link that leads nowhere (a loop) is one line."""
    try:
        status = path.stat()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(status.st_mode):
        raise UserError(f"{path}: not a regular file")
    return status


def _read_array(path: Path, size: int) -> tuple[np.ndarray, str | None]:
    """The array of an .npy (memory-mapped) or .npz, its header checked before the data, and
    the .npz member it came from."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":  # a zip: an .npz, as np.load tells them apart
                return _read_npz_member(path)
            handle.seek(0)
            shape, dtype = _npy_header(handle, path)
        _check_rows(path, shape, dtype, size)
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # the file system's own refusal: the CLI names the place
        hint = "; JSON is what `vaectl serve` takes" if path.suffix.lower() == ".json" else ""
        raise UserError(
            f"{path}: not an .npz or .npy file ({str(err).splitlines()[0][:200]}); predict "
            f"reads those or a folder of 28 x 28 PNGs{hint}"
        ) from None


INPUT_ARRAYS = (
    "x",
    "images",
)  # the input of an .npz with several arrays: x, or images as `vaectl fetch` writes


def _read_npz_member(path: Path) -> tuple[np.ndarray, str]:
    with zipfile.ZipFile(path) as archive:
        arrays = {n.removesuffix(".npy"): n for n in archive.namelist() if n.endswith(".npy")}
        keys = list(arrays)  # np.savez's members; any other file in a zip is no array
        named = next((k for k in INPUT_ARRAYS if k in arrays), None)
        if len(keys) != 1 and named is None:
            shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
            raise UserError(f"{path} holds arrays {shown or 'none'}; name the input x")
        taken = keys[0] if len(keys) == 1 else str(named)
        member = archive.getinfo(arrays[taken])
        with archive.open(member) as handle:
            shape, dtype = _npy_header(handle, path)
        _check_rows(path, shape, dtype, member.file_size)
        with archive.open(member) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False), taken


def _npy_header(handle, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version not in ((1, 0), (2, 0)):
        raise UserError(
            f"{path}: .npy format version {version[0]}.{version[1]}; save it with numpy's default format"
        )
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(handle)  # numpy bounds the header's own size
    if dtype.hasobject:
        raise UserError(
            f"{path} holds Python objects (pickles), which predict never loads; save a numeric array"
        )
    return shape, dtype


def _check_rows(path: Path, shape: tuple[int, ...], dtype: np.dtype, stored_bytes: int) -> None:
    rows, row_values = (shape[0] if shape else 1), math.prod(shape[1:])
    if rows == 0 or row_values == 0:
        raise UserError(f"{path} holds no values (shape {shape}); give at least one row")
    if rows > PREDICT_MAX_ROWS:
        raise UserError(f"{path} holds {rows:,} rows, more than {PREDICT_MAX_ROWS:,}; split it")
    if rows * row_values > PREDICT_MAX_ROWS * PIXELS:
        raise UserError(
            f"{path}: {rows:,} rows of shape {shape[1:]}, more than "
            f"{PREDICT_MAX_ROWS:,} rows of {PIXELS} values"
        )
    if rows * row_values * dtype.itemsize > stored_bytes:
        raise UserError(
            f"{path} declares {rows:,} x {shape[1:]} {dtype} values but holds only "
            f"{stored_bytes:,} bytes (truncated)"
        )


def read_pngs(folder: Path) -> tuple[np.ndarray, list[str]]:
    """A folder of 28 x 28 PNGs as rows in [0, 1], each file's size and pixel count checked
    before it is decoded (a decompression bomb is refused unread)."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserError(f"{folder} holds no .png files")
    if len(files) > PREDICT_MAX_ROWS:
        raise UserError(f"{folder} holds {len(files):,} PNGs, more than {PREDICT_MAX_ROWS:,}; split it")
    rows = np.empty((len(files), PIXELS), np.float32)
    for i, file in enumerate(files):
        size = _regular_file(file).st_size
        if size > PNG_MAX_BYTES:
            raise UserError(f"{file}: {size:,} bytes, more than a 28 x 28 PNG needs ({PNG_MAX_BYTES:,})")
        rows[i] = png_pixels(file)
    return rows, [f.name for f in files]


def png_pixels(file: Path) -> np.ndarray:
    """One PNG's 784 intensities in [0, 1]; its size is read from the header and checked
    before any pixel is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by size below
            image = Image.open(file)
        with image:
            return _intensities(file, image)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise UserError(f"{file}: not a readable image ({str(err).splitlines()[0][:200]})") from None


def _intensities(file: Path, image) -> np.ndarray:
    """16-bit greyscale by its own range, palettes and colour by luminance, and transparency
    only where it is unambiguous: a fully opaque alpha is ignored, and an image whose colour
    is flat holds its digit in the alpha."""
    if image.size != (28, 28):
        raise UserError(f"{file}: {image.size[0]} x {image.size[1]} pixels; the model takes 28 x 28")
    if image.mode.startswith("I"):  # 16- or 32-bit greyscale
        return _scaled(file, np.asarray(image, dtype=np.float64), 65535)
    if image.mode == "F":
        return _scaled(file, np.asarray(image, dtype=np.float64), 1)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    grey = np.asarray(image.convert("L"), dtype=np.float32).reshape(PIXELS) / 255.0
    if "A" not in image.getbands():
        return grey
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32).reshape(PIXELS) / 255.0
    if alpha.min() == 1.0:
        return grey
    if grey.min() == grey.max():
        return alpha
    raise UserError(
        f"{file}: its digit is in both its colour and its transparency; save it "
        "opaque (a light digit on a dark background)"
    )


def _scaled(file: Path, pixels: np.ndarray, full_scale: int) -> np.ndarray:
    if pixels.min() < 0 or pixels.max() > full_scale:
        raise UserError(f"{file}: values {pixels.min():g}..{pixels.max():g} outside 0..{full_scale}")
    return (pixels / full_scale).astype(np.float32).reshape(PIXELS)


def predict(
    ref: str, input_path: Path | None, output: Path, mode: str, n: int, seed: int, echo=lambda line: None
) -> dict:
    """Score `input_path` (or draw `n` samples) with NAME[@alias|/version] through the same
    verified bundle and pyfunc as `pull` and `serve`, PREDICT_BATCH_ROWS rows at a time; write
    `output` (.npz) atomically. The output's place is taken before any scoring; `echo` hears
    each step (reading, fetching, loading, scoring batch by batch)."""
    from vaectl.tracking import registry_client

    if mode not in PREDICT_MODES:
        raise UserError(f"unknown mode {mode!r}: use {', '.join(PREDICT_MODES)}")
    if mode != "sample" and input_path is None:
        raise UserError(f"mode {mode} needs --input (an .npz/.npy or a folder of PNGs)")
    check_destination(output, claim=None if output.is_dir() else earlier_prediction)
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name such as predictions.npz")
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: folder {output.parent} does not exist")
    if mode == "sample" or input_path is None:  # sample mode reads no input
        x, names = np.zeros((1, 1), np.float32), None
    else:
        x, names, source = read_inputs(input_path, mode)
    with (
        atomic_path(output, claim=earlier_prediction) as staged,
        temporary_dir("vaectl-predict-") as tmp,
    ):
        name, version, bundle, checked = download_verified(ref, Path(tmp), echo)
        if mode != "sample":
            echo(f"{len(x):,} rows from {source}")
        echo(f"loading {name} v{version} ({checked} files verified)")
        model = registry_client.load_pyfunc(str(bundle))
        params = {"mode": mode, "n": n, "seed": seed}
        if mode == "sample":
            y = registry_client.predict(model, x, params)
        else:
            y = _score(model, x, params, lambda done: echo(f"{mode}: {done:,}/{len(x):,} rows"))
        arrays = {"output": y, "mode": np.array(mode), "model": np.array(f"{name}/{version}")}
        if names is not None:
            arrays["names"] = np.array(names)
        flagged = flagged_arrays(y, bundle) if mode == "score" else {}
        with open(staged, "wb") as handle:
            np.savez(handle, **arrays, **flagged)  # type: ignore[arg-type]
    summary = {"name": name, "version": version, "rows": len(y), "shape": list(y.shape)}
    if flagged:
        summary["threshold"] = float(flagged["threshold"])
        summary["out_of_distribution"] = int(flagged["out_of_distribution"].sum())
    return summary | {"output": str(output)}


PREDICTION_ARRAYS = {"output.npy", "mode.npy", "model.npy"}  # in every .npz predict writes


def earlier_prediction(output: Path) -> str | None:
    """None when the file at `output` is an .npz an earlier `vaectl predict` wrote (the only
    file predict replaces), else what it is."""
    try:
        with zipfile.ZipFile(output) as archive:
            if PREDICTION_ARRAYS <= set(archive.namelist()):
                return None
    except (OSError, zipfile.BadZipFile):
        pass
    return "other data than an earlier `vaectl predict` output"


def flagged_arrays(y: np.ndarray, bundle: Path) -> dict[str, np.ndarray]:
    """Score mode's N x 2 output as named arrays, with the threshold the version flags by."""
    threshold = json.loads((bundle / "artifacts" / "score.json").read_text())["threshold"]
    return {"score": y[:, 0], "out_of_distribution": y[:, 1] > 0, "threshold": np.array(threshold)}


def _score(model, x: np.ndarray, params: dict, progress) -> np.ndarray:
    """The pyfunc's output for every row of x, PREDICT_BATCH_ROWS at a time, written into
    one output array (memory: x's pages in use, one batch, the output); `progress` hears the
    rows done after each batch."""
    from vaectl.tracking import registry_client

    first = registry_client.predict(model, _batch(x, 0), params)
    y = np.empty((len(x), *first.shape[1:]), first.dtype)
    y[: len(first)] = first
    progress(len(first))
    for start in range(PREDICT_BATCH_ROWS, len(x), PREDICT_BATCH_ROWS):
        y[start : start + PREDICT_BATCH_ROWS] = registry_client.predict(model, _batch(x, start), params)
        progress(min(start + PREDICT_BATCH_ROWS, len(x)))
    return y


def _batch(x: np.ndarray, start: int) -> np.ndarray:
    """Rows start.. of x as the pyfunc takes them (uint8 pixels scaled to [0, 1])."""
    rows = np.asarray(x[start : start + PREDICT_BATCH_ROWS])
    return rows.astype(np.float32) / 255.0 if rows.dtype == np.uint8 else rows
