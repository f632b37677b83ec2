"""`vaectl report`: reports/index.html, one self-contained page of the pipeline's answer.

Figures embedded, inline style, no script and no network fetch, so it renders offline and on
air-gapped machines (the great-expectations Data Docs and `dvc plots show` load theirs from a
CDN): the VAE-vs-AE table with intervals, the 2-D experiment, the out-of-distribution
detection table, every data check with its observed value, the figures, and links to the JSON
reports. It holds only what the reports determine (no dates, paths or run ids), so a rebuild
is byte-identical. The page is also attached to the evaluate MLflow run whose metrics.json it
shows.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from vaectl import UserError, custody
from vaectl.files import atomic_path
from vaectl.report import LEVEL, compared_rows, comparison_rows, headline_first

CAPTIONS = {  # figure file name -> what it shows
    "reconstructions.png": "Test images (top) and their reconstructions by the VAE and the AE",
    "samples.png": "Samples: each model decodes draws from its own latent prior",
    "interpolation_same_class.png": "Latent interpolations between two test images of one class",
    "interpolation_diff_class.png": "Latent interpolations between test images of different classes",
    "latent_map.png": "Test latents projected on their first two principal components",
    "curves.png": "Validation loss per epoch: the VAE's −ELBO and the AE's reconstruction BCE",
    "latents_2d.png": "2-D latents of the test images (VAE and AE trained with latent_dim 2)",
    "manifold_2d.png": "Images decoded from a grid over each 2-D latent space (holes: unrecognisable ones)",
    "scores.png": "Novelty scores of the test split and of each novel set (bits/dim)",
    "roc.png": "ROC curves: the test split against each novel set, per score",
}
LINKS = (
    "summary.json",
    "metrics.json",
    "latents.json",
    "holes.json",
    "ood.json",
    "validation.json",
    "data_docs/index.html",
)


def read_report(path: Path, stage: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `vaectl {stage}` first (or `dvc repro`)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); rerun `vaectl {stage}`") from None


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], css_class: str = "numbers") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _observed(result: dict) -> str:
    """A data check's observed value: the measured value, or how many rows broke the rule."""
    if "observed_value" in result:
        return str(result["observed_value"])
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} of {result.get('element_count', '?')} rows break it"
    return json.dumps(result, sort_keys=True)


def validation_rows(validation: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for table, checks in sorted(validation["tables"].items()):
        for check in checks["expectations"]:
            rule = ", ".join(f"{k}={v}" for k, v in sorted(check["kwargs"].items()))
            rows.append(
                (
                    table,
                    check["expectation"].removeprefix("expect_"),
                    rule,
                    _observed(check["result"]),
                    "pass" if check["success"] else "FAIL",
                )
            )
    return rows


def _with_interval(found: dict, sign: str = "") -> str:
    return f"{found['value']:{sign}.3f} [{found['ci'][0]:{sign}.3f}, {found['ci'][1]:{sign}.3f}]"


def ood_rows(ood: dict) -> list[tuple[str, ...]]:
    """Per novel set and score: AUROC and FPR at 95% TPR with their intervals, and the VAE
    score's AUROC against the AE's reconstruction error (difference, interval, verdict)."""
    rows: list[tuple[str, ...]] = []
    for set_name, found in sorted(ood["sets"].items()):
        versus_ae = {key.split(" - ")[0]: c["auroc"] for key, c in found["comparisons"].items()}
        for score, metrics in sorted(found["scores"].items()):
            versus = versus_ae.get(score)
            rows.append(
                (
                    set_name,
                    score,
                    _with_interval(metrics["auroc"]),
                    _with_interval(metrics["fpr_at_95_tpr"]),
                    f"{_with_interval(versus, '+')} {versus['verdict']}" if versus else "(the baseline)",
                )
            )
    return rows


def ood_section(ood: dict | None) -> str:
    if ood is None:
        return "<h2>Out-of-distribution detection</h2><p>No report: run <code>vaectl ood</code>.</p>"
    return (
        f"<h2>Out-of-distribution detection</h2><p>The {ood['normal']['images']} test images "
        f"against each novel set; a higher score is more novel. AUROC and FPR at 95% TPR with "
        f"95% bootstrap intervals; each VAE score's AUROC against the AE's (equivalent within "
        f"±{ood['equivalence_margin']:g}).</p>"
        + _table(("novel set", "score", "AUROC", "FPR at 95% TPR", "AUROC − AE's"), ood_rows(ood))
    )


def figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(CAPTIONS.get(path.name, path.stem.replace("_", " ")))
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption} (<code>{html.escape(path.name)}</code>)</figcaption></figure>"
    )


STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}
.numbers td{text-align:right}.numbers td:first-child,.numbers td:last-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:13px}
.ok{color:#176b1b}.bad{color:#b00020;font-weight:bold}code{background:#f4f4f4;padding:0 3px}"""


def page(
    metrics: dict, summary: dict, holes: dict, ood: dict | None, validation: dict, figures: list[Path]
) -> str:
    """The self-contained HTML page."""
    level = f"{LEVEL:.0%}"
    top = summary["comparisons"]
    data_ok = validation["success"]
    compare_header = ("metric", "VAE", "AE", "VAE/AE", "verdict")
    sections = [
        f"<h1>vaectl: VAE vs AE</h1><p>{html.escape(metrics['protocol'])}; "
        f"{metrics['test_images']} test images, {metrics['interp_pairs']} interpolation pairs of each kind. "
        f"Values are means with {level} bootstrap intervals "
        f"({metrics['bootstrap']['resamples']} resamples). A verdict is 'equivalent' when the 90% "
        f"interval lies inside the metric's declared margin, names a model when the interval of "
        f"the VAE − AE difference excludes 0 (for these positive means, when the VAE/AE ratio's "
        f"shown excludes 1), and is 'inconclusive' otherwise. Of {sum(top.values())} compared "
        f"metrics, the VAE is better on {top['vae_better']}, the AE on {top['ae_better']}, "
        f"{top['equivalent']} are equivalent and {top['inconclusive']} inconclusive.</p>",
        "<h2>Test metrics</h2>" + _table(compare_header, headline_first(comparison_rows(metrics))),
        f"<h2>2-D latent experiment: holes</h2><p>Share of decoded images the classifier does "
        f"not recognise (max probability under {holes['hole_threshold']}), for a "
        f"{holes['grid']}×{holes['grid']} grid and for samples.</p>"
        + _table(compare_header, compared_rows(holes["comparison"])),
        ood_section(ood),
        f'<h2>Data checks</h2><p class="{"ok" if data_ok else "bad"}">'
        f"{validation['expectations_evaluated'] - validation['expectations_failed']} of "
        f"{validation['expectations_evaluated']} passed.</p>"
        + _table(("table", "check", "rule", "observed", "result"), validation_rows(validation), "checks"),
        "<h2>Figures</h2>" + "".join(figure_html(path) for path in figures),
        "<h2>Files</h2><ul>"
        + "".join(f'<li><a href="{name}">{name}</a></li>' for name in LINKS)
        + "</ul><p>The great-expectations Data Docs load their scripts and styles from a CDN; "
        "this page and the JSON reports need no network.</p>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>vaectl report</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


FIGURE_MAX_BYTES = 8 << 20  # the pipeline's largest figure is under 1 MB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(reports: Path, experiment: str, models: tuple[str, str], models_2d: tuple[str, str]) -> str:
    """Write `reports`/index.html; attach it to the evaluate run that wrote metrics.json.
    Every report and figure folder on the page is first checked against the run that wrote it
    (custody.py): evaluate and ood of the models named `models`, holes of `models_2d`, and
    validate; a file no such run recorded is refused. Returns the evaluate run's id."""
    from vaectl import tracking

    metrics = read_report(reports / "metrics.json", "evaluate")
    summary = read_report(reports / "summary.json", "evaluate")
    holes = read_report(reports / "holes.json", "holes")
    validation = read_report(reports / "validation.json", "validate")
    ood = read_report(reports / "ood.json", "ood") if (reports / "ood.json").exists() else None
    run_id = check_custody(reports, experiment, models, models_2d, ood is not None)
    folders = ["figures", "holes"] + (["ood"] if ood is not None else [])
    figures = [
        checked_figure(path) for folder in folders for path in sorted((reports / folder).glob("*.png"))
    ]
    if not figures:
        raise UserError(f"no figures in {reports / 'figures'}: run `vaectl evaluate` first")
    with atomic_path(reports / "index.html") as staged:
        staged.write_text(page(metrics, summary, holes, ood, validation, figures), encoding="utf-8")
    tracking.attach_artifacts(run_id, [reports / "index.html"])
    return run_id


def check_custody(
    reports: Path, experiment: str, models: tuple[str, str], models_2d: tuple[str, str], with_ood: bool
) -> str:
    """Each file and figure folder the page shows is what its writer's run recorded, that run
    scored the models it is meant to show (`models`: the VAE-vs-AE answer; `models_2d`: the
    holes), and no link is among them. Returns the evaluate run's id."""

    def of(names: tuple[str, str]) -> tuple[dict[str, str], str]:
        return custody.scored_names(*names), f" scoring {names[0]} and {names[1]}"

    run_id, tags = custody.recorded_run(
        reports / "metrics.json", custody.METRICS, experiment, "evaluate", *of(models)
    )
    custody.check_sibling(reports / "summary.json", custody.EVALUATE_SUMMARY, run_id, tags, "evaluate")
    custody.check_sibling(reports / "figures", custody.EVALUATE_FIGURES, run_id, tags, "evaluate")
    holes = custody.recorded_run(
        reports / "holes.json", custody.HOLES_REPORT, experiment, "holes", *of(models_2d)
    )
    custody.check_sibling(reports / "holes", custody.HOLES_FIGURES, *holes, "holes")
    if with_ood:
        ood = custody.recorded_run(reports / "ood.json", custody.OOD_REPORT, experiment, "ood", *of(models))
        custody.check_sibling(reports / "ood", custody.OOD_FIGURES, *ood, "ood")
    custody.recorded_run(reports / "validation.json", custody.VALIDATION, experiment, "validate")
    return run_id


def checked_figure(path: Path) -> Path:
    """A figure to embed: a plain PNG file under FIGURE_MAX_BYTES (its run recorded it too)."""
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path} is not a plain file; the page embeds only figures a stage wrote")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        signature = handle.read(len(PNG_SIGNATURE))
    if size > FIGURE_MAX_BYTES or signature != PNG_SIGNATURE:
        what = f"{size:,} bytes, more than {FIGURE_MAX_BYTES:,}" if size > FIGURE_MAX_BYTES else "not a PNG"
        raise UserError(f"{path}: {what}; the page embeds only the figures the stages write")
    return path
