"""`vaectl validate`: a great-expectations suite over the prepared data.

GX validates tables, so each split becomes a per-image summary table (label, pixel range,
mean, dtype, shape, content hash), plus one row-per-split table (drift, class balance) and
one table of each split's distinct image hashes (a hash seen twice = an image shared
between splits). Results go to reports/validation.json (a DVC metric) and a Data Docs site.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaectl import UserError, custody
from vaectl.data import SPLITS, load_manifest, load_split, manifest_sha256
from vaectl.files import atomic_path, check_destination, sha256_file, temporary_dir, write_json
from vaectl.params import ValidateParams

RUN_NAME = "vaectl-validate"
PINNED_RUN_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass
class ValidationOutcome:
    success: bool
    report: dict
    failures: list[str]


def image_table(images: np.ndarray, labels: np.ndarray):
    """One row per image: what the expectations look at."""
    import pandas as pd

    flat = images.reshape(len(images), -1)
    as_float = flat.astype(np.float64)
    return pd.DataFrame(
        {
            "label": labels.astype(np.int64),
            "pixel_min": as_float.min(axis=1) if len(flat) else [],
            "pixel_max": as_float.max(axis=1) if len(flat) else [],
            "pixel_mean": as_float.mean(axis=1) if len(flat) else [],  # NaN if any pixel is NaN
            "dtype": str(images.dtype),
            "shape": "x".join(map(str, images.shape[1:])),
            "image_hash": [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat],
        }
    )


def split_table(tables: dict):
    """One row per split: mean intensity and the smallest / largest class share."""
    import pandas as pd

    rows = []
    for split, table in tables.items():
        shares = table["label"].value_counts(normalize=True)
        rows.append(
            {
                "split": split,
                "mean_intensity": float(table["pixel_mean"].mean()),
                "min_class_share": float(shares.min()) if len(shares) else 0.0,
                "max_class_share": float(shares.max()) if len(shares) else 0.0,
            }
        )
    return pd.DataFrame(rows)


def hash_table(tables: dict):
    """Each split's distinct image hashes stacked: a repeated hash is a cross-split leak."""
    import pandas as pd

    return pd.DataFrame(
        {
            "image_hash": np.concatenate([t["image_hash"].unique() for t in tables.values()]),
            "split": np.concatenate([[s] * t["image_hash"].nunique() for s, t in tables.items()]),
        }
    )


def build_suites(params: ValidateParams, manifest: dict, tables: dict) -> list[tuple]:
    """[(table name, dataframe, [expectations])] — the whole suite, data-independent rules
    except for expected counts (manifest) and the drift reference (train's mean)."""
    import great_expectations.expectations as gxe

    suites = []
    for split, table in tables.items():
        expected_rows = manifest["splits"][split]["count"]
        suites.append(
            (
                f"{split}_images",
                table,
                [
                    gxe.ExpectTableRowCountToEqual(value=expected_rows),
                    gxe.ExpectTableRowCountToBeBetween(min_value=params.min_rows),
                    gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(10))),
                    gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
                    gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
                    gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
                    gxe.ExpectColumnValuesToBeInSet(column="shape", value_set=["28x28"]),
                    gxe.ExpectColumnValuesToNotBeNull(column="pixel_mean"),
                    gxe.ExpectColumnValuesToNotBeNull(column="label"),
                ],
            )
        )
    per_split = split_table(tables)
    n_classes = max(1, int(tables["train"]["label"].nunique()))
    train_mean = float(per_split.loc[per_split["split"] == "train", "mean_intensity"].iloc[0])
    tol = params.class_balance_tolerance
    suites.append(
        (
            "splits",
            per_split,
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="mean_intensity",
                    min_value=train_mean * (1 - params.drift_tolerance),
                    max_value=train_mean * (1 + params.drift_tolerance),
                ),
                gxe.ExpectColumnValuesToBeBetween(column="min_class_share", min_value=(1 - tol) / n_classes),
                gxe.ExpectColumnValuesToBeBetween(column="max_class_share", max_value=(1 + tol) / n_classes),
            ],
        )
    )
    suites.append(
        (
            "leakage",
            hash_table(tables),
            [
                gxe.ExpectColumnValuesToBeUnique(column="image_hash"),
            ],
        )
    )
    return suites


def _describe(result) -> dict:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    observed = dict(result.result or {})
    summary = {
        k: observed[k]
        for k in (
            "observed_value",
            "unexpected_count",
            "unexpected_percent",
            "partial_unexpected_list",
            "element_count",
        )
        if k in observed
    }
    return {"expectation": config.type, "kwargs": kwargs, "success": bool(result.success), "result": summary}


def run_suites(suites: list[tuple], docs_dir: Path) -> dict:
    """Validate every table with GX in a throwaway file context; move its Data Docs to
    `docs_dir`. Returns {table: {"success": bool, "expectations": [...]}}."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # The site's paths and pages carry the run's name and time: pinned, so that the same data
    # give a byte-identical site (a DVC out). When a validation ran is for logs, not outputs.
    run_id = RunIdentifier(run_name=RUN_NAME, run_time=PINNED_RUN_TIME)
    with temporary_dir("vaectl-gx-") as root:
        context = gx.get_context(mode="file", project_root_dir=root)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("prepared")
        results = {}
        for name, frame, expectations in suites:
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            suite = context.suites.add(gx.ExpectationSuite(name=name))
            for expectation in expectations:
                suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )
            checkpoint = context.checkpoints.add(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=[definition],
                    result_format="SUMMARY",
                )
            )
            outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
            (validation,) = outcome.run_results.values()
            results[name] = {
                "success": bool(validation.success),
                "expectations": [_describe(r) for r in validation.results],
            }
        context.build_data_docs()
        site = Path(root) / "gx" / "uncommitted" / "data_docs" / "local_site"
        with atomic_path(docs_dir) as tmp:
            shutil.copytree(site, tmp)
            pin_site(tmp)
    return results


REMOTE_LOGO = re.compile(r'https://great-expectations-web-assets\.[^"]*/logo-long\.png[^"]*')
TIMESTAMP = re.compile(r"\b\d{8}T\d{6}\.\d{6}Z\b")  # GX's batch "ge_load_time"
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


# GX's pages load Bootstrap, jQuery and Vega from CDNs, so offline they render unstyled: each
# page opens with this line (styled inline) pointing at the offline page's Data checks
OFFLINE_POINTER = (
    '<p style="margin:0;padding:8px 16px;background:#fff3cd;font:14px sans-serif">'
    "This page loads its styles and scripts from CDNs. Offline, the same checks with their "
    'observed values are under Data checks in <a href="{up}../index.html">reports/index.html</a>.</p>'
)


def pin_site(site: Path) -> None:
    """Make the Data Docs site a function of the data alone. GX writes three things that
    change on every run: each page's logo points at a remote image whose URL carries the
    render time and a random context id (point it at the copy in static/images, which also
    keeps the site offline), the batch's load time (pinned to the run time), and random ids
    of collapsible sections (numbered in order of appearance instead). Each page also gets
    OFFLINE_POINTER after its <body>."""
    pinned = PINNED_RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ")
    ids: dict[str, str] = {}
    for page in sorted(site.rglob("*.html")):
        up = "../" * (len(page.relative_to(site).parts) - 1)
        text = REMOTE_LOGO.sub(f"{up}static/images/logo-long.png", page.read_text())
        text = TIMESTAMP.sub(pinned, text)
        text = UUID.sub(lambda m: ids.setdefault(m.group(), f"section-{len(ids):04d}"), text)
        text = text.replace("<body>", "<body>" + OFFLINE_POINTER.format(up=up), 1)
        page.write_text(text)


def run(
    params: ValidateParams, prepared: Path, report_path: Path, docs_dir: Path, experiment: str
) -> ValidationOutcome:
    """Check the prepared data, write the report and Data Docs, and record the report's sha256
    on an MLflow run of kind validate (custody.VALIDATION), which `vaectl report` checks."""
    check_destination(report_path, folder=False)  # refused before the data are read
    check_destination(docs_dir, folder=True)
    manifest = load_manifest(prepared)
    tables = {split: image_table(*load_split(prepared, split)) for split in SPLITS}
    if len(tables["train"]) == 0:
        raise UserError(f"{prepared}/train.npz holds no images")
    results = run_suites(build_suites(params, manifest, tables), docs_dir)
    failures = [
        f"{table}: {e['expectation']}({_kwargs_text(e['kwargs'])}) -> {_observed_text(e['result'])}"
        for table, outcome in results.items()
        for e in outcome["expectations"]
        if not e["success"]
    ]
    total = sum(len(o["expectations"]) for o in results.values())
    report = {
        "success": not failures,
        "expectations_evaluated": total,
        "expectations_failed": len(failures),
        "tables": results,
    }
    with atomic_path(report_path) as staged:
        write_json(staged, report)
        log_validation(report, sha256_file(staged), manifest_sha256(prepared), experiment)
    return ValidationOutcome(success=not failures, report=report, failures=failures)


def log_validation(report: dict, report_sha: str, data_sha: str, experiment: str) -> None:
    from vaectl import tracking

    tags = {**tracking.standard_tags("validate", data_sha), custody.VALIDATION.tag: report_sha}
    with tracking.start_run(experiment, "validate", tags) as run:
        run.log_metrics(
            {
                "expectations_evaluated": report["expectations_evaluated"],
                "expectations_failed": report["expectations_failed"],
            }
        )


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "value_set" or len(v) < 12)


def _observed_text(result: dict) -> str:
    if "observed_value" in result:
        return f"observed {result['observed_value']!r}"
    if "unexpected_count" in result:
        examples = result.get("partial_unexpected_list", [])[:5]
        return f"{result['unexpected_count']} unexpected, e.g. {examples!r}"
    return "failed"
