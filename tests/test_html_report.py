"""The headline DVC metric (evaluate's summary.json) and `vaectl report`'s offline page, from
reports with known contents."""

import base64
import json
import re

import numpy as np
import pytest

from vaectl import UserError, custody
from vaectl.evaluate import headline
from vaectl.files import folder_sha256, sha256_file, write_json
from vaectl.html_report import run as report_page
from vaectl.report import compare_units

from .conftest import use_local_store

# A 1 x 1 PNG: the page must carry these exact bytes.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def reports_with_known_answers(root):
    """Four comparisons whose verdicts are known (two VAE wins, one AE win, one equivalent), a
    validation report with one failed check, and one figure in each figure folder."""
    rng, units = np.random.default_rng(0), np.random.default_rng(1).gamma(2.0, size=300)
    compared = {
        "recon_bce": compare_units("recon_bce", units, 0.5 * units, True, rng),  # AE half the cost
        "diff_class.ppl": compare_units("diff_class.ppl", 0.5 * units, units, True, rng),
        "same_class.ppl": compare_units("same_class.ppl", 0.5 * units, units, True, rng),
        "samples.entropy": compare_units("samples.entropy", units, units.copy(), True, rng),
    }
    assert [c["verdict"] for c in compared.values()] == ["worse", "better", "better", "equivalent"]
    metrics = {
        "protocol": "binarised test set",
        "test_images": 300,
        "interp_pairs": 300,
        "bootstrap": {"resamples": 2000, "level": 0.95, "seed": 0},
        "vae": {"iw_nll": 101.25, "neg_elbo": 108.5, "recon_bce": 83.0, "active_units": 7, "iw_k": 5000},
        "ae": {"recon_bce": 41.5},
        "comparison": compared,
        "vae_intervals": {"iw_nll": [99.0, 103.5]},
    }
    holes = {
        "grid": 20,
        "hole_threshold": 0.5,
        "comparison": {"grid.unrecognised": compare_units("grid.unrecognised", units, units, False, rng)},
    }
    failed = {
        "expectation": "expect_table_row_count_to_equal",
        "kwargs": {"value": 500},
        "result": {"observed_value": 499},
        "success": False,
    }
    passed = {
        "expectation": "expect_column_values_to_be_between",
        "kwargs": {"column": "pixel_max"},
        "result": {"element_count": 10, "unexpected_count": 3},
        "success": True,
    }
    validation = {
        "success": False,
        "expectations_evaluated": 2,
        "expectations_failed": 1,
        "tables": {"test_images": {"expectations": [failed, passed], "success": False}},
    }
    reports = root / "reports"
    summary = headline(metrics)
    for name, doc in (
        ("metrics", metrics),
        ("summary", summary),
        ("holes", holes),
        ("validation", validation),
    ):
        write_json(reports / f"{name}.json", doc)
    for folder in ("figures", "holes"):
        (reports / folder).mkdir()
        (reports / folder / f"{folder}_pixel.png").write_bytes(PIXEL)
    return reports


def record(kind: str, tags: dict) -> str:
    """A finished run of `kind` with these tags, as the stage that writes a report records it."""
    from vaectl import tracking

    with tracking.start_run("vaectl", kind, {"vaectl.kind": kind, **tags}) as recorded:
        pass
    return recorded.run_id


def record_as_evaluated(reports, names=("vae", "ae")) -> str:
    """An evaluate run of the models `names` that recorded writing these metrics.json,
    summary.json and figures, as `vaectl evaluate` does; its id."""
    return record(
        "evaluate",
        {
            **custody.scored_names(*names),
            custody.METRICS.tag: sha256_file(reports / "metrics.json"),
            custody.EVALUATE_SUMMARY.tag: sha256_file(reports / "summary.json"),
            custody.EVALUATE_FIGURES.tag: folder_sha256(reports / "figures"),
        },
    )


def record_holes_and_validation(reports) -> None:
    record(
        "holes",
        {
            **custody.scored_names("vae-2d", "ae-2d"),
            custody.HOLES_REPORT.tag: sha256_file(reports / "holes.json"),
            custody.HOLES_FIGURES.tag: folder_sha256(reports / "holes"),
        },
    )
    record("validate", {custody.VALIDATION.tag: sha256_file(reports / "validation.json")})


def run(reports, experiment="vaectl"):
    return report_page(reports, experiment, ("vae", "ae"), ("vae-2d", "ae-2d"))


@pytest.fixture
def reports(tmp_path, monkeypatch):
    use_local_store(monkeypatch, tmp_path)
    reports = reports_with_known_answers(tmp_path)
    record_as_evaluated(reports)
    record_holes_and_validation(reports)
    return reports


def test_summary_holds_the_headline_numbers_and_the_verdict_counts(reports):
    assert json.loads((reports / "summary.json").read_text()) == {
        "vae": {"iw_nll": 101.25, "neg_elbo": 108.5, "recon_bce": 83.0, "active_units": 7},
        "ae": {"recon_bce": 41.5},
        "comparisons": {"vae_better": 2, "ae_better": 1, "equivalent": 1, "inconclusive": 0},
    }


def test_page_is_self_contained_and_shows_the_evidence(reports):
    run(reports)
    page = (reports / "index.html").read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(i) for i in images] == [PIXEL, PIXEL]
    assert "the VAE is better on 2, the AE on 1, 1 are equivalent and 0 inconclusive" in page
    assert "<td>499</td><td>FAIL</td>" in page  # a failed check, with what was observed
    assert "<td>3 of 10 rows break it</td><td>pass</td>" in page
    assert "1 of 2 passed" in page
    assert "<td>101.2 [99, 103.5]</td>" in page  # the VAE's own number with its interval
    table = page.split("<h2>Test metrics</h2>")[1].split("</table>")[0]
    metric_rows = re.findall(r"<tr><td>([^<]+)</td>", table)
    assert metric_rows == [
        "iw_nll (k=5000)",
        "neg_elbo",
        "recon_bce",
        "active_units",  # the headline first
        "diff_class.ppl",
        "same_class.ppl",
        "samples.entropy",
    ]
    assert "A verdict is 'equivalent' when the 90% interval lies inside the metric's declared margin" in page
    first = (reports / "index.html").read_bytes()
    run(reports)
    assert (reports / "index.html").read_bytes() == first  # nothing that differs between runs


def test_page_is_attached_to_the_evaluate_run_of_that_metrics_file(reports):
    from vaectl import tracking

    with tracking.start_run("vaectl", "evaluate", {"vaectl.kind": "evaluate"}) as other:
        pass  # an evaluate run of some other metrics.json
    mine = record_as_evaluated(reports)  # the newest of two runs that recorded this file
    assert run(reports) == mine
    listed = lambda run_id: sorted(f.path for f in tracking.client().list_artifacts(run_id))  # noqa: E731
    assert listed(mine) == ["index.html"]
    assert listed(other.run_id) == []
    assert tracking.run_status(mine) == "FINISHED"


@pytest.mark.parametrize("forged", ["metrics.json", "summary.json"])
def test_a_report_no_evaluate_run_wrote_is_refused_before_the_page_is_written(reports, forged):
    doc = json.loads((reports / forged).read_text())
    doc["vae"]["iw_nll"] = 1.0  # a better number than was measured
    write_json(reports / forged, doc)
    with pytest.raises(UserError, match=f"{forged}.*vaectl evaluate.*dvc repro -f evaluate"):
        run(reports)
    assert not (reports / "index.html").exists()


@pytest.mark.parametrize(
    "missing, stage", [("holes.json", "vaectl holes"), ("summary.json", "vaectl evaluate")]
)
def test_a_missing_report_names_the_stage_that_writes_it(reports, missing, stage):
    (reports / missing).unlink()
    with pytest.raises(UserError, match=f"{missing} not found: run `{stage}` first"):
        run(reports)
    assert not (reports / "index.html").exists()


def ood_report_with_known_answers(reports) -> dict:
    """An ood.json from novelty.detection on sets whose AUROCs are known (one perfectly
    separated, one at chance), recorded by an `ood` run as `vaectl ood` records it."""
    from vaectl import novelty

    rng = np.random.default_rng(2)
    normal = {"vae.iw_nll": rng.normal(0, 1, 200), "ae.reconstruction": rng.normal(0, 1, 200)}
    novel = {"vae.iw_nll": rng.normal(50, 1, 100), "ae.reconstruction": rng.normal(0, 1, 100)}
    found = novelty.detection(normal, novel, [("vae.iw_nll", "ae.reconstruction")], 200, rng)
    ood = {"normal": {"images": 200}, "equivalence_margin": 0.02, "sets": {"noise": found}}
    write_json(reports / "ood.json", ood)
    (reports / "ood").mkdir()
    (reports / "ood" / "roc.png").write_bytes(PIXEL)
    record(
        "ood",
        {
            **custody.scored_names("vae", "ae"),
            custody.OOD_REPORT.tag: sha256_file(reports / "ood.json"),
            custody.OOD_FIGURES.tag: folder_sha256(reports / "ood"),
        },
    )
    return ood


def test_page_shows_the_ood_detection_of_the_report_an_ood_run_recorded(reports):
    ood = ood_report_with_known_answers(reports)
    run(reports)
    page = (reports / "index.html").read_text()
    assert (
        "<td>noise</td><td>vae.iw_nll</td><td>1.000 [1.000, 1.000]</td><td>0.000 [0.000, 0.000]</td>" in page
    )
    chance = ood["sets"]["noise"]["scores"]["ae.reconstruction"]["auroc"]
    assert f"<td>noise</td><td>ae.reconstruction</td><td>{chance['value']:.3f} [" in page
    versus = ood["sets"]["noise"]["comparisons"]["vae.iw_nll - ae.reconstruction"]["auroc"]
    assert versus["verdict"] == "better" and f"{versus['value']:+.3f} [" in page
    doc = json.loads((reports / "ood.json").read_text())
    doc["sets"]["noise"]["scores"]["ae.reconstruction"]["auroc"]["value"] = 0.999  # forged
    write_json(reports / "ood.json", doc)
    with pytest.raises(UserError, match="ood.json.*vaectl ood.*dvc repro -f ood"):
        run(reports)


def test_page_without_an_ood_report_says_which_command_writes_it(reports):
    run(reports)
    assert "No report: run <code>vaectl ood</code>." in (reports / "index.html").read_text()


def plant_secret_link(reports):
    secret = reports.parent / "secret.txt"
    secret.write_text("password")
    (reports / "figures" / "zz.png").symlink_to(secret)


def plant_junk_png(reports):
    (reports / "figures" / "big.png").write_bytes(PIXEL + bytes(30 << 20))


def plant_replaced_figure(reports):
    (reports / "holes" / "holes_pixel.png").write_bytes(PIXEL + b"another picture")


def plant_edited(name, key, value):
    def plant(reports):
        doc = json.loads((reports / name).read_text())
        doc[key] = value
        write_json(reports / name, doc)

    return plant


def plant_other_models_evaluation(reports):
    """metrics.json, summary.json and figures of a genuine evaluate run of the 2-D models."""
    record_as_evaluated(reports, names=("vae-2d", "ae-2d"))
    (reports / "figures" / "figures_pixel.png").write_bytes(PIXEL + b"2-d")
    doc = json.loads((reports / "metrics.json").read_text())
    doc["vae"]["iw_nll"] = 140.0
    write_json(reports / "metrics.json", doc)
    record_as_evaluated(reports, names=("vae-2d", "ae-2d"))


FORGED_PAGES = {
    "a link to a secret file among the figures": (plant_secret_link, r"figures.*is not a plain file"),
    "a 30 MB junk PNG": (
        plant_junk_png,
        r"figures \(sha256 .*\) is not what MLflow run \w+ of `vaectl evaluate`",
    ),
    "a replaced figure": (
        plant_replaced_figure,
        r"holes \(sha256 .*\) is not what MLflow run \w+ of `vaectl holes`",
    ),
    "hand-edited holes.json": (
        plant_edited("holes.json", "hole_threshold", 0.01),
        r"holes.json \(sha256 .*\) is not what any `vaectl holes` run of holes scoring vae-2d and ae-2d",
    ),
    "hand-edited validation.json": (
        plant_edited("validation.json", "success", True),
        r"validation.json \(sha256 .*\) is not what any `vaectl validate` run",
    ),
    "the 2-D models' evaluation": (
        plant_other_models_evaluation,
        r"metrics.json \(sha256 .*\) is not what any `vaectl evaluate` run of evaluate scoring vae and ae",
    ),
}


@pytest.mark.parametrize("forgery", FORGED_PAGES)
def test_the_page_shows_only_what_the_runs_of_the_named_models_recorded(reports, forgery):
    plant, refusal = FORGED_PAGES[forgery]
    plant(reports)
    with pytest.raises(UserError, match=refusal):
        run(reports)
    assert not (reports / "index.html").exists()


def test_a_figure_too_large_or_not_a_png_is_refused_even_if_recorded(reports):
    from vaectl.html_report import FIGURE_MAX_BYTES, checked_figure

    (reports / "figures" / "big.png").write_bytes(PIXEL + bytes(FIGURE_MAX_BYTES))
    (reports / "figures" / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="more than"):
        checked_figure(reports / "figures" / "big.png")
    with pytest.raises(UserError, match="not a PNG"):
        checked_figure(reports / "figures" / "text.png")
