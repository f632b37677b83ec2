"""`vaectl register`, `pull` and `predict`: the MLflow model registry, with aliases, not stages.

predict: batch scoring of an .npz/.npy or a folder of PNGs through a verified bundle's pyfunc.
register: each exported model becomes a new version (tags: test metrics, data sha, git commit,
DVC experiment), alias `candidate`; `champion` moves only when the promotion rule holds.
pull: NAME[@alias|/version] -> a deploy bundle whose every file (MLmodel, bundled code,
requirements, artifacts) is checked against the sha256s recorded in the registry when the
version was registered, before anything in it runs; then loaded once as a smoke test.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaectl import UserError, custody
from vaectl.files import atomic_path, read_json, sha256_file, tree_listing, write_json
from vaectl.params import PREDICT_MODES, RegistryParams
from vaectl.report import flatten_model_metrics

PRIMARY_METRIC = {"vae": "iw_nll", "ae": "recon_bce"}  # lower is better for both


@dataclass
class Decision:
    promote: bool
    reason: str


def promotion_decision(kind: str, metrics: dict, champion_value: float | None,
                       rule: RegistryParams) -> Decision:
    """The promotion rule: beat the current champion's primary metric by more than
    `rule.min_improvement` nats (any value beats no champion) and, for the VAE when
    `rule.require_smoother_than_baseline`, interpolate significantly more smoothly than the
    AE (the 95% interval of the VAE/AE ratio of `rule.smoothness_metric` lies below 1)."""
    metric = PRIMARY_METRIC[kind]
    value = metrics[kind][metric]
    if kind == "vae" and rule.require_smoother_than_baseline:
        c = metrics["comparison"][rule.smoothness_metric]
        if c["better"] != "vae":
            return Decision(False, f"VAE/AE {rule.smoothness_metric} = {c['ratio']:.3f} (95% interval "
                                   f"{c['ratio_ci'][0]:.3f}-{c['ratio_ci'][1]:.3f}): the VAE is not "
                                   "significantly smoother")
    if champion_value is None:
        return Decision(True, f"no champion yet; {metric} {value:.3f}")
    better = value < champion_value - rule.min_improvement
    # six significant digits, so that close values show where they differ (0.0004 nats, say)
    return Decision(better, f"{metric} {value:.6g} {'beats' if better else 'does not beat'} champion's "
                            f"{champion_value:.6g} by more than {rule.min_improvement}")


def version_description(kind: str, metrics: dict, decision: Decision, training_run: str | None,
                        evaluate_run: str | None) -> str:
    """What the registry UI shows for a version: its test numbers, the promotion decision and
    where the evidence is (the training and evaluate runs)."""
    own = flatten_model_metrics(metrics[kind])
    lines = [f"{kind.upper()} on {metrics['test_images']} test images ({metrics['protocol']}).", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(own.items())]
    lines += ["", f"@champion: {'promoted' if decision.promote else 'not promoted'}: {decision.reason}."]
    if training_run:
        lines.append(f"Training run: {training_run}.")
    if evaluate_run:
        lines.append(f"Evaluate run (VAE-vs-AE table with intervals, figures, report page): {evaluate_run}.")
    return "\n".join(lines)


def exported_model(export_dir: Path, kind: str, experiment: str) -> tuple[dict, dict]:
    """(model card, the export run's tags) of export_dir, after checking its checksums.json
    against the digest the export run recorded and every file against checksums.json."""
    _, export_tags = custody.recorded_run(export_dir / "checksums.json", custody.CHECKSUMS,
                                          experiment, f"export-{kind}")
    verify_export(export_dir)  # before anything of it is read, the card included
    card = read_json(export_dir / "model_card.json", "vaectl export",
                     ("model", "checkpoint_sha256", "data_manifest_sha256", "architecture", "binarize",
                      "best_val_loss"))
    if card["model"] != kind or card["checkpoint_sha256"] != export_tags[custody.EXPORTED_CHECKPOINT]:
        raise UserError(f"{export_dir} holds a {card['model']} export of checkpoint "
                        f"{str(card['checkpoint_sha256'])[:12]}…, not the {kind} its export run recorded; "
                        f"{custody.CHECKSUMS.fix}")
    return card, export_tags


def evaluated_metrics(evaluate_run: str, kind: str, checkpoint_sha: str) -> dict:
    """metrics.json as the evaluate run logged it (its artifact, checked against the digest the
    run recorded), provided that run scored this very checkpoint."""
    from vaectl import tracking

    tags = tracking.run_tags(evaluate_run)
    if tags.get(custody.SCORED[kind]) != checkpoint_sha:
        raise UserError(f"evaluate run {evaluate_run} did not score the exported {kind} checkpoint "
                        f"{checkpoint_sha[:12]}…; run `vaectl evaluate` and `vaectl export` again")
    with tempfile.TemporaryDirectory(prefix="vaectl-metrics-") as tmp:
        path = tracking.run_artifact(evaluate_run, "metrics.json", Path(tmp))
        if sha256_file(path) != tags.get(custody.METRICS.tag):
            raise UserError(f"the metrics.json stored with evaluate run {evaluate_run} is not the one it "
                            "recorded; run `vaectl evaluate` again")
        return read_json(path, "vaectl evaluate", ("protocol", "test_images", "vae", "ae", "comparison"))


def register(rule: RegistryParams, export_root: Path, prepared: Path, experiment: str,
             report_path: Path) -> dict:
    """Register each export as a new version, its promotion decided on the test metrics of the
    evaluate run that scored that very checkpoint, read from MLflow (custody.py)."""
    from vaectl import tracking
    from vaectl.data import load_split
    from vaectl.tracking import registry_client

    example = load_split(prepared, "test")[0][:2].reshape(2, -1).astype(np.float32) / 255
    exports = {kind: exported_model(export_root / kind, kind, experiment) for kind in ("vae", "ae")}
    report = {}
    for kind, name in (("vae", rule.vae_name), ("ae", rule.ae_name)):
        card, export_tags = exports[kind]
        evaluate_run, training_run = export_tags[custody.EVALUATE_RUN], export_tags["vaectl.training_run_id"]
        metrics = evaluated_metrics(evaluate_run, kind, card["checkpoint_sha256"])
        tags = {**tracking.standard_tags(f"register-{kind}", card["data_manifest_sha256"]),
                "vaectl.training_run_id": training_run, "vaectl.evaluate_run_id": evaluate_run}
        test_metrics = flatten_model_metrics(metrics[kind])
        version_tags = {
            **{f"metric.{k}": str(v) for k, v in test_metrics.items()},
            "data_sha256": card["data_manifest_sha256"], "git_commit": tags["mlflow.source.git.commit"],
            "checkpoint_sha256": card["checkpoint_sha256"], "protocol": metrics["protocol"],
            "training_run_id": training_run, "evaluate_run_id": evaluate_run,
            **({"dvc_exp_name": tags["dvc.exp_name"]} if "dvc.exp_name" in tags else {}),
        }
        evidence = {"params": {**card["architecture"], "binarize": card["binarize"]},
                    "metrics": {f"test.{k}": float(v) for k, v in test_metrics.items() if k != "iw_k"}
                    | {"best_val_loss": card["best_val_loss"]}}
        with registry_client.registration_lock():
            champion_value = registry_client.champion_metric(name, PRIMARY_METRIC[kind])
            decision = promotion_decision(kind, metrics, champion_value, rule)
            version = registry_client.register_model(
                name, export_root / kind, example, experiment, tags, version_tags, evidence,
                version_description(kind, metrics, decision, training_run, evaluate_run))
            if decision.promote:
                registry_client.set_alias(name, "champion", version)
        report[kind] = {"name": name, "version": version, "aliases": ["candidate"] +
                        (["champion"] if decision.promote else []), "promoted": decision.promote,
                        "reason": decision.reason}
    write_json(report_path, report)
    return report


def verify_export(export_dir: Path) -> None:
    """Every file of the export is listed in its checksums.json with its sha256, and nothing
    listed is missing: an emptied or partial listing verifies nothing, so it is refused."""
    listed = read_json(export_dir / "checksums.json", "vaectl export")
    present = {p.name for p in export_dir.iterdir() if p.name != "checksums.json"}
    unlisted = sorted(present - set(listed))
    if unlisted or not listed:
        raise UserError(f"{export_dir}/checksums.json does not list {', '.join(unlisted) or 'any file'}; "
                        "export again")
    for filename, digest in listed.items():
        path = export_dir / filename
        if not path.is_file() or sha256_file(path) != digest:
            raise UserError(f"{path} is missing or changed since `vaectl export`; export again")


def verify_bundle(root: Path, recorded: str | None, ref: str) -> int:
    """Check the downloaded bundle against the listing recorded at registration: no file
    missing, added or changed. Returns how many files were checked."""
    if not recorded:
        raise UserError(f"{ref} was registered without bundle checksums; register it again")
    expected, found = json.loads(recorded), tree_listing(root)
    problems = ([f"missing {p}" for p in sorted(set(expected) - set(found))]
                + [f"unexpected {p}" for p in sorted(set(found) - set(expected))]
                + [f"changed {p}" for p in sorted(set(found) & set(expected)) if found[p] != expected[p]])
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UserError(f"{ref}: the stored bundle differs from what was registered ({shown}); "
                        f"refusing to load it")
    return len(found)


def download_verified(ref: str, into: Path) -> tuple[str, str, Path, int]:
    """NAME[@alias|/version] downloaded under `into` and checked file by file:
    (name, version, bundle directory, files checked)."""
    from vaectl.tracking import registry_client

    name, version = registry_client.resolve_model(ref)
    downloaded = registry_client.download_model(name, version, into)
    recorded = registry_client.version_tag(name, version, registry_client.BUNDLE_TAG)
    checked = verify_bundle(downloaded, recorded, f"{name}/{version}")
    return name, version, downloaded, checked


def pull(ref: str, dest: Path) -> dict:
    """Download NAME[@alias|/version] into `dest` (atomically), verify, load once."""
    from vaectl.tracking import registry_client

    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} is a file; give a directory (it is replaced atomically)")
    with tempfile.TemporaryDirectory(prefix="vaectl-pull-") as tmp:
        name, version, downloaded, checked = download_verified(ref, Path(tmp))
        model = registry_client.load_pyfunc(str(downloaded))
        card = json.loads((downloaded / "artifacts" / "model_card.json").read_text())
        probe = np.full((1, 784), 0.5, dtype=np.float32)
        output = model.predict(probe)
        if output.shape != (1, 784) or not np.isfinite(output).all():
            raise UserError(f"{name}/{version} loaded but its smoke prediction is malformed")
        with atomic_path(dest) as staged:
            shutil.copytree(downloaded, staged)
    summary = {"name": name, "version": version, "dest": str(dest), "files_verified": checked,
               "model": card["model"], "test_metrics": card["test_metrics"]}
    write_json(dest / "pulled.json", summary)
    return summary


def read_inputs(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """(rows for the pyfunc, PNG file names or None) from an .npz (its one array, or `x`), an
    .npy, or a folder of 28 x 28 PNGs. uint8 pixels (and PNGs) are divided by 255; anything
    else (N x 28 x 28 images too) goes to the pyfunc's own checks as it is."""
    if path.is_dir():
        from PIL import Image

        files = sorted(path.glob("*.png"))
        if not files:
            raise UserError(f"{path} holds no .png files")
        rows = []
        for file in files:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
            except (OSError, ValueError) as err:
                raise UserError(f"{file}: not a readable image ({err})") from None
            if pixels.shape != (28, 28):
                raise UserError(f"{file}: {pixels.shape[1]} x {pixels.shape[0]} pixels; "
                                "the model takes 28 x 28")
            rows.append(pixels.reshape(784))
        return np.stack(rows), [f.name for f in files]
    if not path.is_file():
        raise UserError(f"input not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not an .npz or .npy file ({str(err).splitlines()[0]})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            if len(keys) != 1 and "x" not in keys:
                raise UserError(f"{path} holds arrays {', '.join(keys) or 'none'}; name the input x")
            x = loaded[keys[0] if len(keys) == 1 else "x"]
    else:
        x = loaded
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return x, None


def predict(ref: str, input_path: Path | None, output: Path, mode: str, n: int, seed: int) -> dict:
    """Score `input_path` (or draw `n` samples) with NAME[@alias|/version] through the same
    verified bundle and pyfunc as `pull` and `serve`; write `output` (.npz) atomically."""
    from vaectl.tracking import registry_client

    if mode not in PREDICT_MODES:
        raise UserError(f"unknown mode {mode!r}: use {', '.join(PREDICT_MODES)}")
    if mode != "sample" and input_path is None:
        raise UserError(f"mode {mode} needs --input (an .npz/.npy or a folder of PNGs)")
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name such as predictions.npz")
    x, names = read_inputs(input_path) if mode != "sample" else (np.zeros((1, 1), np.float32), None)
    with tempfile.TemporaryDirectory(prefix="vaectl-predict-") as tmp:
        name, version, bundle, _ = download_verified(ref, Path(tmp))
        model = registry_client.load_pyfunc(str(bundle))
        y = registry_client.predict(model, x, {"mode": mode, "n": n, "seed": seed})
    arrays = {"output": y, "mode": np.array(mode), "model": np.array(f"{name}/{version}")}
    if names is not None:
        arrays["names"] = np.array(names)
    with atomic_path(output) as staged, open(staged, "wb") as handle:
        np.savez(handle, **arrays)
    return {"name": name, "version": version, "rows": len(y), "shape": list(y.shape), "output": str(output)}
