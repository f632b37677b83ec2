"""Inference across training seeds (the study): intervals that carry both sources of noise,
and verdicts with four outcomes.

A trial's number m_i (training seed i) is off the truth by its seed's training effect and by
the error of evaluating on a finite test set with random binarisation, pairs and samples.
Evaluate's bootstrap interval gives the second as a standard error w_i; the spread of the
m_i gives the first. All trials score the same test images, so their evaluation errors do
not average out over seeds, and the mean's variance is

    s^2 / n + mean(w_i^2)        (s: the seeds' standard deviation, n seeds)

with Welch-Satterthwaite's degrees of freedom. The part of the evaluation error that is
independent between trials (each has its own eval seed) is then counted twice, so the
interval errs wide, never narrow. `tests/test_inference.py` simulates studies with a known
truth: this interval covers it about 95% of the time; the t-interval over seeds alone
does not.

Shares are combined on the logit scale (of (k + 1/2) / (n + 1), which is finite at 0 and 1)
and ratios on the log scale, so their intervals stay inside (0, 1) and (0, inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from vaectl.metric_table import Margin
from vaectl.report import EQUIVALENCE_LEVEL, LEVEL


@dataclass(frozen=True)
class Estimate:
    """One trial's number on a scale where it is roughly normal, with its evaluation error."""

    value: float
    standard_error: float


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def estimate(scale: str, value: float, ci: Sequence[float] | None = None, units: int = 0) -> Estimate:
    """A trial's value (its evaluate interval `ci` at LEVEL, or `units` judged images for a
    share) on `scale`: 'identity', 'log' (ratios) or 'logit' (shares). No interval and no
    units: no evaluation error known (0), as for a count of active units."""
    if scale == "logit":
        if units < 1:
            raise ValueError("a share needs its number of units")
        p = (value * units + 0.5) / (units + 1)
        return Estimate(math.log(p / (1 - p)), 1 / math.sqrt((units + 1) * p * (1 - p)))
    to = math.log if scale == "log" else float
    x = to(value)
    if ci is None:
        return Estimate(x, 0.0)
    return Estimate(x, (to(ci[1]) - to(ci[0])) / (2 * _z(LEVEL)))


def back(scale: str, x: float) -> float:
    if scale == "log":
        return math.exp(x)
    if scale == "logit":
        return 1 / (1 + math.exp(-x))
    return x


def combined(estimates: Sequence[Estimate], level: float = LEVEL) -> tuple[float, float, float]:
    """(centre, low, high) on the estimates' scale: the mean over seeds and its `level`
    interval, seeds' spread and evaluation error together (module docstring)."""
    from scipy import stats

    x = np.array([e.value for e in estimates])
    n = len(x)
    between = x.var(ddof=1) / n if n > 1 else 0.0
    within = float(np.mean([e.standard_error**2 for e in estimates]))
    total = between + within
    if total == 0:
        return float(x.mean()), float(x.mean()), float(x.mean())
    df = total**2 / (between**2 / (n - 1)) if between > 0 else math.inf
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(total)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def interval(scale: str, estimates: Sequence[Estimate], level: float = LEVEL) -> list[float]:
    """`combined`'s interval, back on the values' own scale."""
    _, low, high = combined(estimates, level)
    return [back(scale, low), back(scale, high)]


def equivalence_interval(
    difference: Sequence[Estimate], ratio: Sequence[Estimate] | None, margin: Margin
) -> tuple[list[float], bool]:
    """(the 90% interval on the margin's scale, whether it lies inside the margin): two
    one-sided tests at 5%. ([], False) for a ratio margin where there is no ratio (the AE's
    mean can be 0)."""
    if margin.scale == "ratio":
        if ratio is None:
            return [], False
        _, low, high = combined(ratio, EQUIVALENCE_LEVEL)
        inside = -math.log1p(margin.size) < low and high < math.log1p(margin.size)
        return [math.exp(low), math.exp(high)], inside
    _, low, high = combined(difference, EQUIVALENCE_LEVEL)
    return [low, high], -margin.size < low and high < margin.size


def verdict(
    difference: Sequence[Estimate], ratio: Sequence[Estimate] | None, margin: Margin, lower_is_better: bool
) -> str:
    """The VAE against the AE: 'equivalent' when the equivalence interval lies inside the
    margin, else 'better' or 'worse' when the 95% interval on the margin's scale excludes no
    difference (the VAE/AE ratio's excludes 1, or where the margin is on the difference or
    there is no ratio, the VAE - AE difference's excludes 0), else 'inconclusive'. The
    table shows that same interval, so a cell and its verdict agree. Equivalence is tested
    first: the margin declares smaller effects irrelevant, however significant."""
    if equivalence_interval(difference, ratio, margin)[1]:
        return "equivalent"
    tested = ratio if margin.scale == "ratio" and ratio is not None else difference
    _, low, high = combined(tested, LEVEL)
    if high < 0 or low > 0:  # a log ratio below 0 is a VAE/AE ratio below 1
        return "better" if (high < 0) == lower_is_better else "worse"
    return "inconclusive"
