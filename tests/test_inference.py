"""The study's inference across training seeds: known answers for the combined interval, the
share and ratio scales and the four verdicts, and the combined interval's coverage on
simulated studies whose truth is known."""

import math

import numpy as np
import pytest

from vaectl.inference import Estimate, combined, equivalence_interval, estimate, interval, verdict
from vaectl.metric_table import Margin
from vaectl.study import seed_interval


def test_without_evaluation_error_it_is_the_t_interval_over_seeds():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    low, high = interval("identity", [Estimate(v, 0.0) for v in (1.0, 2.0, 3.0)])
    assert [low, high] == pytest.approx([-0.484138, 4.484138], abs=1e-6)


def test_evaluation_error_adds_to_the_seeds_spread_with_satterthwaites_degrees_of_freedom():
    # spread: var 1 / 3 seeds = 1/3; evaluation: 1; total 4/3; df = (4/3)^2 / ((1/3)^2 / 2) = 32
    # t(0.975, 32) = 2.036933, half width 2.036933 * sqrt(4/3) = 2.352048
    centre, low, high = combined([Estimate(v, 1.0) for v in (1.0, 2.0, 3.0)])
    assert centre == 2.0 and [low, high] == pytest.approx([2 - 2.352048, 2 + 2.352048], abs=1e-6)
    # seeds that agree exactly: the evaluation error alone, a normal interval
    assert combined([Estimate(5.0, 1.0)] * 3)[1:] == pytest.approx([5 - 1.959964, 5 + 1.959964], abs=1e-6)


def test_a_share_is_combined_on_the_logit_scale_and_stays_inside_0_1():
    # 8 of 100 in each of two seeds: p~ = 8.5 / 101, logit -2.387142, se 1 / sqrt(101 p~ (1 - p~))
    # = 0.358408; -2.387142 -/+ 1.959964 * 0.358408, back through the logistic
    assert interval("logit", [estimate("logit", 0.08, units=100)] * 2) == pytest.approx(
        [0.043538, 0.156478], abs=1e-6
    )
    # the old failure: shares 0, 8%, 16% over 3 seeds gave a t-interval reaching below 0
    shares = [0.0, 0.08, 0.16]
    assert seed_interval(shares)[0] < 0
    low, high = interval("logit", [estimate("logit", s, units=500) for s in shares])
    assert 0 < low < 0.08 < high < 1
    # no hole at all in 100 images is still a finite, positive estimate
    assert estimate("logit", 0.0, units=100).value == pytest.approx(math.log(0.5 / 100.5))


def test_a_ratio_is_combined_on_the_log_scale():
    e = estimate("log", 0.9, [0.81, 1.0])  # half width on the log scale: ln(1 / 0.81) / 2
    assert e.value == pytest.approx(math.log(0.9)) and e.standard_error == pytest.approx(
        math.log(1 / 0.81) / (2 * 1.959964), rel=1e-6
    )
    low, high = interval("log", [estimate("log", r, [r * 0.5, r * 2]) for r in (0.1, 0.2)])
    assert low > 0


def differences(mean: float, spread: float, se: float) -> list[Estimate]:
    return [Estimate(mean + d, se) for d in (-spread, 0.0, spread)]


RATIO_5 = Margin("ratio", 0.05)
POINTS_3 = Margin("difference", 0.03)


def test_verdicts_say_better_worse_equivalent_or_inconclusive():
    # lower is better: the VAE's difference clearly below 0, far outside a 3-point margin
    assert verdict(differences(-0.2, 0.01, 0.01), None, POINTS_3, lower_is_better=True) == "better"
    assert verdict(differences(0.2, 0.01, 0.01), None, POINTS_3, lower_is_better=True) == "worse"
    assert verdict(differences(0.2, 0.01, 0.01), None, POINTS_3, lower_is_better=False) == "better"
    # inside the margin, significant or not: equivalent (the margin says it does not matter)
    assert verdict(differences(-0.01, 0.001, 0.002), None, POINTS_3, lower_is_better=True) == "equivalent"
    assert verdict(differences(0.0, 0.005, 0.005), None, POINTS_3, lower_is_better=True) == "equivalent"
    # a small mean difference with an interval wider than the margin: inconclusive, not "no difference"
    assert verdict(differences(0.0, 0.05, 0.05), None, POINTS_3, lower_is_better=True) == "inconclusive"


def test_a_ratio_margin_is_tested_on_the_ratio_and_needs_one():
    near_one = [estimate("log", r, [r * 0.99, r / 0.99]) for r in (0.99, 1.0, 1.01)]
    diff = differences(0.0, 0.5, 0.5)  # in the metric's own unit: wide, but the margin is relative
    assert verdict(diff, near_one, RATIO_5, lower_is_better=True) == "equivalent"
    interval_, inside = equivalence_interval(diff, near_one, RATIO_5)
    assert inside and 1 / 1.05 < interval_[0] < 1 < interval_[1] < 1.05
    # outside the margin, significance is read on the ratio too: the cell the table shows
    below_one = [estimate("log", r, [r * 0.95, r / 0.95]) for r in (0.6, 0.7, 0.8)]
    assert verdict(diff, below_one, RATIO_5, lower_is_better=True) == "better"
    assert verdict(diff, None, RATIO_5, lower_is_better=True) == "inconclusive"  # the difference's
    # no ratio (the AE's mean can be 0): no equivalence claim, whatever the difference
    assert equivalence_interval(diff, None, RATIO_5) == ([], False)
    assert verdict(differences(0.0, 0.001, 0.001), None, RATIO_5, lower_is_better=True) == "inconclusive"


def simulated_coverage(
    spread_between: float, shared: float, independent: float, studies: int = 2000, seeds: int = 5
):
    """Coverage of the true mean 0 by the combined interval and by the t-interval over seeds
    alone, over simulated studies of `seeds` seeds. Each trial = training effect (its own) + the test
    set's error (shared by all trials of a study, as they score the same images) + its own
    evaluation noise; each reports its evaluation error as evaluate's bootstrap would see it."""
    rng = np.random.default_rng(0)
    evaluation_se = math.hypot(shared, independent)
    hit_combined = hit_seeds = 0
    for _ in range(studies):
        values = (
            rng.normal(0, spread_between, seeds) + rng.normal(0, shared) + rng.normal(0, independent, seeds)
        )
        low, high = interval("identity", [Estimate(v, evaluation_se) for v in values])
        hit_combined += low < 0 < high
        low, high = seed_interval(list(values))
        hit_seeds += low < 0 < high
    return hit_combined / studies, hit_seeds / studies


def test_the_combined_interval_covers_the_truth_95_percent_where_the_seeds_alone_do_not():
    """Every trial scoring the same test set with the same evaluation seed (the study before
    each trial had its own): the seeds-only interval misses most of the time."""
    combined_rate, seeds_rate = simulated_coverage(spread_between=0.5, shared=1.0, independent=0.0)
    assert 0.93 <= combined_rate <= 0.97  # 2000 studies: the binomial sd is 0.005
    assert seeds_rate < 0.6


@pytest.mark.parametrize("spread_between, shared", [(0.2, 0.05), (1.0, 0.2), (1.0, 0.5), (0.2, 1.0)])
def test_the_combined_interval_holds_its_level_whichever_noise_dominates(spread_between, shared):
    """Satterthwaite's degrees of freedom are an approximation: with 5 seeds it keeps coverage
    at 0.94-0.95 from training noise dominating to evaluation noise dominating (with 3 seeds
    it dips to 0.92 in between)."""
    rate, _ = simulated_coverage(spread_between, shared, independent=0.0, studies=1500)
    assert rate >= 0.93


def test_independent_evaluation_noise_only_widens_the_combined_interval():
    """Each trial with its own evaluation seed: part of the noise is counted twice, so the
    interval errs wide (coverage at or above 95%), never narrow."""
    combined_rate, _ = simulated_coverage(spread_between=0.5, shared=0.5, independent=0.8)
    assert combined_rate >= 0.95
