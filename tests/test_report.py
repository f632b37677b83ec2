"""The bootstrap behind every VAE-vs-AE verdict, on cases whose answer is known."""

import numpy as np
import pytest

from vaectl.report import bootstrap_mean, compare_units, lower_is_better


def test_identical_models_are_equivalent():
    values = np.random.default_rng(0).gamma(2.0, size=300)
    result = compare_units("ppl", values, values.copy(), True, np.random.default_rng(1))
    assert result["ratio"] == 1 and result["ratio_ci"] == pytest.approx([1, 1])
    assert result["verdict"] == "equivalent" and result["margin"] == "VAE/AE within ×1.05"


def test_half_the_value_is_better_for_a_cost_and_worse_for_a_confidence():
    rng = np.random.default_rng(0)
    ae = rng.gamma(2.0, size=300)
    vae = 0.5 * ae * rng.uniform(0.9, 1.1, size=300)  # paired: per unit about half the AE's
    cost = compare_units("diff_class.ppl", vae, ae, True, np.random.default_rng(1))
    assert cost["ratio_ci"][0] < 0.5 < cost["ratio_ci"][1] and cost["ratio_ci"][1] < 0.52
    assert cost["verdict"] == "better"
    assert compare_units("samples.max_prob", vae, ae, True, np.random.default_rng(1))["verdict"] == "worse"


def test_pairing_removes_the_shared_spread():
    """Per-pair values that vary a lot between pairs but by 10% between models: paired, the
    10% is significant; resampled independently, the spread between pairs swamps it."""
    rng = np.random.default_rng(0)
    ae = rng.lognormal(0, 1, size=400)
    vae = 0.9 * ae
    assert compare_units("ppl", vae, ae, True, np.random.default_rng(1))["verdict"] == "better"
    assert compare_units("ppl", vae, ae, False, np.random.default_rng(1))["verdict"] == "inconclusive"


def test_same_distribution_intervals_cover_one_about_95_percent_of_the_time():
    """Independent samples of one distribution: the ratio's interval should contain 1 in about
    95% of datasets (a percentile bootstrap at n = 100 runs a little under)."""
    rng = np.random.default_rng(0)
    covered = [
        compare_units("samples.entropy", rng.gamma(2.0, size=100), rng.gamma(2.0, size=100), False, rng)[
            "verdict"
        ]
        in ("equivalent", "inconclusive")
        for _ in range(200)
    ]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_interval_of_a_mean_has_the_normal_width():
    """n draws of N(0, sigma^2): the 95% interval of the mean is about +-1.96 sigma / sqrt(n)."""
    sigma, n = 3.0, 400
    values = np.random.default_rng(0).normal(10.0, sigma, size=n)
    low, high = bootstrap_mean(values, np.random.default_rng(1))
    assert high - low == pytest.approx(2 * 1.96 * sigma / np.sqrt(n), rel=0.15)
    assert low < values.mean() < high


@pytest.mark.parametrize(
    "name, lower",
    [
        ("recon_bce", True),
        ("diff_class.ppl_normalized", True),
        ("same_class.midpoint_entropy", True),
        ("samples.entropy", True),
        ("same_class.midpoint_max_prob", False),
        ("samples.max_prob", False),
    ],
)
def test_which_way_is_better(name, lower):
    assert lower_is_better(name) is lower


@pytest.mark.parametrize("name", ["recon_nll", "diff_class.pplx", "elsewhere.ppl", "midpoint.ppl.x"])
def test_an_undeclared_metric_is_an_error_not_a_direction(name):
    """Before the metric table, a name missing from a suffix list counted as higher-is-better."""
    with pytest.raises(ValueError, match="is not declared in vaectl/metric_table.py"):
        compare_units(name, np.ones(5), np.ones(5), True, np.random.default_rng(0))


def test_every_metric_a_table_names_is_declared():
    """The study's table and figures, the promotion rule's smoothness options and the headline
    all name declared metrics (a ratio or a model's value of one)."""
    import typing

    from vaectl import metric_table, study
    from vaectl.figures import STUDY_PANELS
    from vaectl.params import RegistryParams

    def declared(column: str) -> str:  # 'vae.iw_nll', 'recon_bce.ae', 'diff_class.ppl.ratio'
        for model in ("vae.", "ae."):
            column = column.removeprefix(model)
        for part in (".vae", ".ae", ".ratio", ".difference"):
            column = column.removesuffix(part)
        return column

    columns = [c for c, _ in study.TABLE] + [c for _, lines, _ in STUDY_PANELS for c, _ in lines]
    options = typing.get_args(typing.get_type_hints(RegistryParams)["smoothness_metric"])
    for name in [declared(c) for c in columns] + list(options) + list(metric_table.PROMOTION.values()):
        metric_table.measure(name)
    assert metric_table.headline("vae") == ("iw_nll", "neg_elbo", "recon_bce", "active_units")
    assert metric_table.headline("ae") == ("recon_bce",)


def test_a_share_that_is_zero_for_the_ae_still_gets_a_verdict():
    """Shares of unrecognisable images can be 0: no ratio then, but the difference decides."""
    vae = np.r_[np.ones(40), np.zeros(460)]  # 8% unrecognisable
    result = compare_units("samples.unrecognised", vae, np.zeros(500), False, np.random.default_rng(0))
    assert result["ratio"] is None and result["ratio_ci"] is None
    assert result["difference_ci"][0] > 0 and result["verdict"] == "worse"


@pytest.mark.parametrize(
    "factor, noise, expected",
    [
        (0.98, 0.0, "equivalent"),  # significant, but inside the 5% margin: equivalence first
        (1.01, 0.05, "equivalent"),  # the 90% ratio interval about [1.00, 1.02]
        (0.94, 0.0, "better"),  # significant and past the margin
        (1.06, 0.0, "worse"),
        (1.03, 0.6, "inconclusive"),  # the interval reaches past 1.05 and below 1
    ],
)
def test_the_four_verdicts_on_a_ratio_margin(factor, noise, expected):
    """Per unit the VAE's value is `factor` times the AE's, times log-normal noise of mean 1
    and log-spread `noise`."""
    rng = np.random.default_rng(0)
    ae = rng.gamma(4.0, size=400)
    vae = factor * ae * np.exp(noise * rng.standard_normal(400) - noise**2 / 2)
    assert compare_units("ppl", vae, ae, True, np.random.default_rng(1))["verdict"] == expected


def test_equivalence_on_a_difference_margin_needs_the_90_percent_interval_inside_it():
    """Shares (margin +-0.03): 2,000 judged samples each, 10% against 10.5%, are equivalent
    (the difference's 90% interval about +-0.016 around +0.005); 100 each are inconclusive
    (about +-0.07), however close the means."""

    def share(p, n):
        return (np.arange(n) < round(p * n)).astype(float)

    many = compare_units(
        "samples.unrecognised", share(0.105, 2000), share(0.10, 2000), False, np.random.default_rng(0)
    )
    few = compare_units(
        "samples.unrecognised", share(0.10, 100), share(0.10, 100), False, np.random.default_rng(0)
    )
    assert (many["verdict"], many["margin"]) == ("equivalent", "within ±0.03")
    assert few["verdict"] == "inconclusive"
