"""The study's grid and its summary across training seeds (the DVC-experiment run itself is
in test_pipeline.py)."""

import json
import os
from pathlib import Path

import pytest

from vaectl import UserError, study
from vaectl.params import parse_params, study_grid
from vaectl.study import Trial, markdown_table, seed_interval, summarise, trials, write_reports

REPO = Path(__file__).resolve().parents[1]


def test_a_study_overlay_may_set_only_the_grid(tmp_path):
    """The trials run the workspace's params.yaml: an overlay changing training would be a
    grid whose summary does not describe its experiments."""
    overlay = tmp_path / "grid.yaml"
    overlay.write_text("study: {seeds: [0, 1]}\ntrain: {vae: {epochs: 3}}\n")
    with pytest.raises(UserError, match=r"grid.yaml: a study overlay may set only study.\* keys, not train$"):
        study_grid(REPO / "params.yaml", overlay)
    overlay.write_text("study: {seeds: [0, 1], latent_dims: [3]}\n")
    assert study_grid(REPO / "params.yaml", overlay).study.latent_dims == [3]


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    low, high = seed_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(-0.484138, abs=1e-6) and high == pytest.approx(4.484138, abs=1e-6)
    # two seeds: t(0.975, 1) = 12.706205, sd 1/sqrt(2) -> half width 12.706205 / 2
    assert seed_interval([0.0, 1.0]) == pytest.approx([0.5 - 6.353102, 0.5 + 6.353102], abs=1e-6)


def test_default_grid_is_beta_sweep_then_latent_sweep_sharing_the_base_point():
    grid = trials(parse_params({}))
    settings = list(dict.fromkeys(t.setting for t in grid))
    assert settings == [(0.5, 20), (1.0, 20), (4.0, 20), (1.0, 2)]  # the fast default
    assert len(grid) == 20 and len({t.name for t in grid}) == 20
    full = trials(study_grid(REPO / "params.yaml", REPO / "params" / "study-full.yaml"))
    settings = list(dict.fromkeys(t.setting for t in full))
    assert settings == [(0.25, 20), (0.5, 20), (1.0, 20), (2.0, 20), (4.0, 20), (1.0, 2), (1.0, 8), (1.0, 40)]
    assert len(full) == 40 and len({t.name for t in full}) == 40
    assert Trial(0.25, 20, 1).name == "study-b0.25-z20-s1"
    assert Trial(0.5, 8, 2).overrides(1000) == [
        "train.vae.beta=0.5",
        "train.vae.latent_dim=8",
        "train.ae.latent_dim=8",
        "train.vae.seed=2",
        "train.ae.seed=2",
        "eval.seed=2",
        "eval.iw_samples=1000",
    ]


@pytest.mark.parametrize(
    "study, message",
    [
        ({"seeds": [0]}, "at least 2 distinct seeds"),
        ({"seeds": [1, 1]}, "at least 2 distinct seeds"),
        ({"betas": []}, "study.betas"),
        ({"latent_dims": [0]}, "study.latent_dims"),
        ({"iw_samples": 0}, "study.iw_samples"),
    ],
)
def test_bad_study_params_are_one_line_errors(study, message):
    with pytest.raises(UserError, match=message):
        parse_params({"study": study})


def comparison(vae: float, ae: float, verdict: str, halfwidth: float = 0.0) -> dict:
    """A comparison as evaluate writes it, each interval `halfwidth` either side (0: none)."""
    ratio = vae / ae if ae else None

    def ci(x):
        return [x - halfwidth, x + halfwidth]

    return {
        **{"vae": vae, "vae_ci": ci(vae), "ae": ae, "ae_ci": ci(ae), "difference": vae - ae},
        **{"difference_ci": ci(vae - ae), "ratio": ratio, "ratio_ci": ci(ratio) if ratio else None},
        **{"verdict": verdict, "margin": "VAE/AE within ×1.05", "paired": True, "units": [500, 500]},
    }


def fake_metrics(iw_nll: float, ratio: float, verdict: str, halfwidth: float = 0.0) -> dict:
    return {
        "vae": {"iw_nll": iw_nll, "iw_k": 1000, "diff_class": {"ppl": 2.0}},
        "vae_intervals": {"iw_nll": [iw_nll - halfwidth, iw_nll + halfwidth]} if halfwidth else {},
        "comparison": {
            "diff_class.ppl_normalized": comparison(ratio, 1.0, verdict, halfwidth),
            "samples.unrecognised": comparison(0.1, 0.0, "worse"),
        },
    }


def test_summary_gives_each_setting_its_seed_spread_and_verdict_counts():
    results = {
        Trial(1.0, 20, 0): fake_metrics(100.0, 0.9, "better"),
        Trial(1.0, 20, 1): fake_metrics(102.0, 1.1, "worse"),
        Trial(1.0, 20, 2): fake_metrics(104.0, 0.95, "better"),
        Trial(2.0, 20, 0): fake_metrics(110.0, 1.0, "equivalent"),
        Trial(2.0, 20, 1): fake_metrics(111.0, 1.0, "equivalent"),
    }
    rows = summarise(results)
    assert [(r["beta"], r["latent_dim"], r["seeds"]) for r in rows] == [
        (1.0, 20, [0, 1, 2]),
        (2.0, 20, [0, 1]),
    ]
    first = rows[0]["metrics"]
    assert first["vae.iw_nll"]["seeds"] == [100.0, 102.0, 104.0] and first["vae.iw_nll"]["mean"] == 102.0
    assert first["vae.iw_nll"]["ci"] == pytest.approx([102 - 2 * 2.484138, 102 + 2 * 2.484138], abs=1e-5)
    assert first["diff_class.ppl_normalized.ratio"]["mean"] == pytest.approx(0.983333, abs=1e-6)
    assert "samples.unrecognised.ratio" not in first  # the AE's share can be 0: no ratio
    # no hole in 500 images, three times: a share's interval stays inside (0, 1)
    assert 0 < first["samples.unrecognised.ae"]["ci"][0] < first["samples.unrecognised.ae"]["ci"][1] < 0.02
    assert rows[0]["seed_verdicts"]["diff_class.ppl_normalized"] == {
        "better": 2,
        "worse": 1,
        "equivalent": 0,
        "inconclusive": 0,
    }
    assert rows[0]["verdicts"]["diff_class.ppl_normalized"]["verdict"] == "inconclusive"
    assert rows[1]["verdicts"]["diff_class.ppl_normalized"] == {
        "verdict": "equivalent",  # exactly 1 twice, no evaluation error
        "margin": "VAE/AE within ×1.05",
        "equivalence_ci": [1.0, 1.0],
    }
    assert rows[0]["verdicts"]["samples.unrecognised"]["verdict"] == "worse"  # 10 points more holes
    assert rows[1]["seed_verdicts"]["diff_class.ppl_normalized"] == {
        "better": 0,
        "worse": 0,
        "equivalent": 2,
        "inconclusive": 0,
    }
    table = markdown_table(rows, "beta").splitlines()
    assert table[2].startswith("| 1 | 102 [97.03, 107] |") and len(table) == 4
    assert "| 0.9833 [" in table[2] and "] inconclusive |" in table[2]


def test_each_trials_evaluation_error_widens_the_setting_interval():
    def rows(halfwidth):
        results = {Trial(1.0, 20, s): fake_metrics(100.0 + s, 0.9, "better", halfwidth) for s in (0, 1, 2)}
        return summarise(results)[0]["metrics"]

    seeds_only, both = rows(0.0)["vae.iw_nll"], rows(5.0)["vae.iw_nll"]
    assert seeds_only["ci"] == pytest.approx(seed_interval([100.0, 101.0, 102.0]))
    assert both["ci"][0] < seeds_only["ci"][0] and both["ci"][1] > seeds_only["ci"][1]
    assert both["evaluation_se"] == pytest.approx([5.0 / 1.959964] * 3, rel=1e-6)


def test_reports_are_written_together(tmp_path):
    params = parse_params({"study": {"betas": [1.0, 2.0], "latent_dims": [20], "seeds": [0, 1]}})
    results = {
        Trial(b, 20, s): fake_metrics(100.0 + b + s, 1.0 - 0.01 * s, "equivalent")
        for b in (1.0, 2.0)
        for s in (0, 1)
    }
    out = tmp_path / "study"
    files = write_reports(summarise(results), params, out)
    assert [p.name for p in files] == ["beta.png", "study.json", "study.md"]  # one latent point: no plot
    doc = json.loads((out / "study.json").read_text())
    assert doc["base"] == {"beta": 1.0, "latent_dim": 20} and len(doc["settings"]) == 2
    assert "## latent size (beta 1)" in (out / "study.md").read_text()


FLAKY_DVC = """#!/bin/sh
# fails the first $FAILS calls as DVC does on a half-written queue file, then lists one task
n=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$COUNT"
if [ "$n" -lt "$FAILS" ]; then
  echo "ERROR: unexpected error - Extra data: line 1 column 56 (char 55)" >&2
  echo "Having any troubles? Hit us up at https://dvc.org/support" >&2; exit 255
fi
printf 'Task     Name        Created    Status\\n3550d20  study-b1-z2-s0  05:10 PM   Running\\n'
printf 'Worker status: 1 active, 0 idle\\n'
"""


@pytest.fixture
def flaky_dvc(tmp_path, monkeypatch):
    (tmp_path / "dvc").write_text(FLAKY_DVC)
    (tmp_path / "dvc").chmod(0o755)
    monkeypatch.setattr(study, "STATUS_RETRY_S", 0.0)
    return lambda fails: {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "FAILS": str(fails),
        "COUNT": str(tmp_path / f"count{fails}"),
    }


def test_queue_poll_rides_out_a_transient_status_failure(flaky_dvc):
    status, workers = study.queue_status(flaky_dvc(study.STATUS_RETRIES), retries=study.STATUS_RETRIES)
    assert status == {"study-b1-z2-s0": "Running"} and workers


def test_queue_status_failing_past_its_retries_names_dvc_s_error_line(flaky_dvc):
    with pytest.raises(UserError, match=r"`dvc queue status` failed: ERROR: unexpected error - Extra data"):
        study.queue_status(flaky_dvc(3), retries=2)


def test_the_queue_is_asked_less_often_the_longer_no_trial_has_finished():
    """A tenth of the time since the last trial finished, from 2 s (short trials heard at once)
    to 20 s (long ones: a `dvc queue status`, a CPU-second each, every 20 s at most)."""
    assert [study.poll_wait(s) for s in (0, 25, 100, 3600)] == [2.0, 2.5, 10.0, 20.0]
