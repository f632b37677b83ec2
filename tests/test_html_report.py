"""The headline DVC metric (evaluate's summary.json) and `vaectl report`'s offline page, from
reports with known contents."""

import base64
import json
import re

import numpy as np
import pytest

from vaectl import UserError, custody
from vaectl.evaluate import headline
from vaectl.files import sha256_file, write_json
from vaectl.html_report import run
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


def record_as_evaluated(reports) -> str:
    """An evaluate run that recorded writing these metrics.json and summary.json, as `vaectl
    evaluate` does; its id."""
    from vaectl import tracking

    tags = {
        "vaectl.kind": "evaluate",
        custody.METRICS.tag: sha256_file(reports / "metrics.json"),
        custody.EVALUATE_SUMMARY.tag: sha256_file(reports / "summary.json"),
    }
    with tracking.start_run("vaectl", "evaluate", tags) as recorded:
        pass
    return recorded.run_id


@pytest.fixture
def reports(tmp_path, monkeypatch):
    use_local_store(monkeypatch, tmp_path)
    reports = reports_with_known_answers(tmp_path)
    record_as_evaluated(reports)
    return reports


def test_summary_holds_the_headline_numbers_and_the_verdict_counts(reports):
    assert json.loads((reports / "summary.json").read_text()) == {
        "vae": {"iw_nll": 101.25, "neg_elbo": 108.5, "recon_bce": 83.0, "active_units": 7},
        "ae": {"recon_bce": 41.5},
        "comparisons": {"vae_better": 2, "ae_better": 1, "equivalent": 1, "inconclusive": 0},
    }


def test_page_is_self_contained_and_shows_the_evidence(reports):
    run(reports, [reports / "figures", reports / "holes"], "vaectl")
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
    run(reports, [reports / "figures", reports / "holes"], "vaectl")
    assert (reports / "index.html").read_bytes() == first  # nothing that differs between runs


def test_page_is_attached_to_the_evaluate_run_of_that_metrics_file(reports):
    from vaectl import tracking

    with tracking.start_run("vaectl", "evaluate", {"vaectl.kind": "evaluate"}) as other:
        pass  # an evaluate run of some other metrics.json
    mine = record_as_evaluated(reports)  # the newest of two runs that recorded this file
    assert run(reports, [reports / "figures", reports / "holes"], "vaectl") == mine
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
        run(reports, [reports / "figures", reports / "holes"], "vaectl")
    assert not (reports / "index.html").exists()


@pytest.mark.parametrize(
    "missing, stage", [("holes.json", "vaectl holes"), ("summary.json", "vaectl evaluate")]
)
def test_a_missing_report_names_the_stage_that_writes_it(reports, missing, stage):
    (reports / missing).unlink()
    with pytest.raises(UserError, match=f"{missing} not found: run `{stage}` first"):
        run(reports, [reports / "figures", reports / "holes"], "vaectl")
    assert not (reports / "index.html").exists()


def ood_report_with_known_answers(reports) -> dict:
    """An ood.json from novelty.detection on sets whose AUROCs are known (one perfectly
    separated, one at chance), recorded by an `ood` run as `vaectl ood` records it."""
    from vaectl import novelty, tracking

    rng = np.random.default_rng(2)
    normal = {"vae.iw_nll": rng.normal(0, 1, 200), "ae.reconstruction": rng.normal(0, 1, 200)}
    novel = {"vae.iw_nll": rng.normal(50, 1, 100), "ae.reconstruction": rng.normal(0, 1, 100)}
    found = novelty.detection(normal, novel, [("vae.iw_nll", "ae.reconstruction")], 200, rng)
    ood = {"normal": {"images": 200}, "equivalence_margin": 0.02, "sets": {"noise": found}}
    write_json(reports / "ood.json", ood)
    tags = {"vaectl.kind": "ood", custody.OOD_REPORT.tag: sha256_file(reports / "ood.json")}
    with tracking.start_run("vaectl", "ood", tags):
        pass
    return ood


def test_page_shows_the_ood_detection_of_the_report_an_ood_run_recorded(reports):
    ood = ood_report_with_known_answers(reports)
    run(reports, [reports / "figures", reports / "holes"], "vaectl")
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
        run(reports, [reports / "figures", reports / "holes"], "vaectl")


def test_page_without_an_ood_report_says_which_command_writes_it(reports):
    run(reports, [reports / "figures", reports / "holes"], "vaectl")
    assert "No report: run <code>vaectl ood</code>." in (reports / "index.html").read_text()
