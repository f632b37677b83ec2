"""VAE-vs-AE comparisons with uncertainty, shared by the evaluate table, metrics.json, the
model card, the registry's promotion rule and the summary page.

Every compared metric is a mean over units (test images, interpolation pairs, generated
samples). Its 95% interval, and that of the VAE/AE ratio of the means, come from a seeded
percentile bootstrap: paired (the same resampled units for both models) where both models
were measured on the same units, independent where they were not (generated samples). The
verdict, from the VAE's side, is one of four: 'equivalent' when the 90% interval (two one-sided
tests at 5%) lies inside the metric's declared margin (metric_table.py), else 'better' or
'worse' when the 95% interval of the difference excludes 0, else 'inconclusive'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vaectl.metric_table import Margin, headline, measure

RESAMPLES = 2000
LEVEL = 0.95
EQUIVALENCE_LEVEL = 0.90  # two one-sided tests at 5% each: the 90% interval inside the margin
VERDICT_WORDS = ("better", "worse", "equivalent", "inconclusive")  # the VAE against the AE


def lower_is_better(name: str) -> bool:
    """'diff_class.midpoint_entropy' -> True (an entropy), 'samples.max_prob' -> False; an
    undeclared metric is a ValueError (metric_table.py)."""
    return measure(name).lower_is_better


def interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The central `level` percentile interval of bootstrap statistics."""
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def bootstrap_mean(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95% interval of the mean of `values` (units resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    return interval(values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(1))


def verdict_word(c: dict) -> str:
    """'VAE better', 'AE better', 'equivalent (VAE/AE within ×1.05)' or 'inconclusive'."""
    if c["verdict"] == "equivalent":
        return f"equivalent ({c['margin']})"
    return {"better": "VAE better", "worse": "AE better"}.get(c["verdict"], c["verdict"])


def bootstrap_verdict(
    differences: np.ndarray, ratios: np.ndarray | None, margin: Margin, lower_is_better: bool
) -> str:
    """The first against the second from paired bootstrap statistics (their differences, and
    ratios where there are any): equivalence is tested first, as in the study
    (inference.verdict), since the margin declares smaller effects irrelevant."""
    if margin.scale == "ratio" and ratios is not None:
        low, high = interval(ratios, EQUIVALENCE_LEVEL)
        inside = 1 / (1 + margin.size) < low and high < 1 + margin.size
    elif margin.scale == "difference":
        low, high = interval(differences, EQUIVALENCE_LEVEL)
        inside = -margin.size < low and high < margin.size
    else:  # a ratio margin with no ratio (the AE's mean can be 0): equivalence is untestable
        inside = False
    if inside:
        return "equivalent"
    low, high = interval(differences)
    if high < 0 or low > 0:
        return "better" if (high < 0) == lower_is_better else "worse"
    return "inconclusive"


def compare_units(name: str, vae: np.ndarray, ae: np.ndarray, paired: bool, rng: np.random.Generator) -> dict:
    """Means and their intervals, the VAE - AE difference and the VAE/AE ratio of the means
    with theirs, and the verdict (module docstring; significance from the difference's
    interval, the same as the ratio's for positive means, and defined when the AE's mean
    can be 0, as for a share of unrecognisable images, where the ratio is left out)."""
    declared = measure(name)  # an undeclared metric fails here, whatever the data
    vae, ae = np.asarray(vae, dtype=np.float64), np.asarray(ae, dtype=np.float64)
    if paired and len(vae) != len(ae):
        raise ValueError(f"{name}: paired comparison of {len(vae)} and {len(ae)} units")
    picks_vae = rng.integers(0, len(vae), (RESAMPLES, len(vae)))
    picks_ae = picks_vae if paired else rng.integers(0, len(ae), (RESAMPLES, len(ae)))
    means_vae, means_ae = vae[picks_vae].mean(1), ae[picks_ae].mean(1)
    has_ratio = bool((means_ae > 0).all())
    ratios = means_vae / means_ae if has_ratio else None
    verdict = bootstrap_verdict(means_vae - means_ae, ratios, declared.margin, declared.lower_is_better)
    return {
        "vae": float(vae.mean()),
        "vae_ci": interval(means_vae),
        "ae": float(ae.mean()),
        "ae_ci": interval(means_ae),
        "difference": float(vae.mean() - ae.mean()),
        "difference_ci": interval(means_vae - means_ae),
        "ratio": float(vae.mean() / ae.mean()) if has_ratio else None,
        "ratio_ci": interval(ratios) if ratios is not None else None,
        "verdict": verdict,
        "margin": str(declared.margin),
        "paired": paired,
        "units": [len(vae), len(ae)],
    }


def flatten_model_metrics(m: dict) -> dict:
    """{'iw_nll': .., 'same_class': {'ppl': ..}} -> {'iw_nll': .., 'same_class.ppl': ..}."""
    flat = {k: v for k, v in m.items() if not isinstance(v, dict)}
    for group, values in m.items():
        if isinstance(values, dict):
            flat.update({f"{group}.{k}": v for k, v in values.items()})
    return flat


def _fmt(value: float, ci: list[float] | None = None) -> str:
    return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


def compared_rows(comparison: dict) -> list[tuple[str, str, str, str, str]]:
    """Text rows (metric, VAE [interval], AE [interval], VAE/AE [interval], verdict) of a
    report's `comparison` (evaluate's or the 2-D experiment's)."""
    return [
        (
            name,
            _fmt(c["vae"], c["vae_ci"]),
            _fmt(c["ae"], c["ae_ci"]),
            _fmt(c["ratio"], c["ratio_ci"]) if c["ratio"] is not None else "—",
            verdict_word(c),
        )
        for name, c in comparison.items()
    ]


def headline_first(rows: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The rows with the headline metrics on top, in metric_table's order, the rest as they
    were ('iw_nll (k=5000)' is the iw_nll row). The page and the terminal table show them so;
    the model card keeps the report's order (its bytes are part of the committed export)."""
    first = headline()

    def rank(row: tuple[str, ...]) -> int:
        name = row[0].split(" ")[0]
        return first.index(name) if name in first else len(first)

    return sorted(rows, key=rank)


def comparison_rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """evaluate's rows: the compared metrics first, then the VAE's own (likelihood) with
    their intervals."""
    rows = compared_rows(report["comparison"])
    vae = flatten_model_metrics(report["vae"])
    for name, value in vae.items():
        if name not in report["comparison"] and name != "iw_k":  # k goes into the IW-NLL row's name
            label = f"iw_nll (k={vae['iw_k']})" if name == "iw_nll" else name
            ci = report["vae_intervals"].get(name)
            rows.append((label, _fmt(value, ci) if isinstance(value, float) else str(value), "—", "—", ""))
    return rows
