"""Every metric vaectl reports, declared once: which way is better, what it is called, its
unit, and whether it is a headline number and for which model. The comparison verdicts, the
summary (the DVC metric), the registry's version tags and promotion rule, the tables' order
and the study read this table; a metric missing from it is an error, never a silent
direction.

A metric's name in metrics.json is `[where.]measure`: `iw_nll`, or `diff_class.ppl` (the PPL
of different-class interpolations). The measure decides the direction; `where` is one of
WHERE.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Margin:
    """The study's equivalence margin for a VAE-vs-AE comparison: a difference smaller than
    this is declared irrelevant. On the VAE/AE ratio (inside [1/(1 + size), 1 + size]) or on
    the difference (inside [-size, size], in the metric's unit)."""

    scale: str  # "ratio" | "difference"
    size: float

    def __str__(self) -> str:
        return f"VAE/AE within ×{1 + self.size:g}" if self.scale == "ratio" else f"within ±{self.size:g}"


RELATIVE_5 = Margin("ratio", 0.05)  # a 5% change in a path length or an error is the least that matters


@dataclass(frozen=True)
class Measure:
    lower_is_better: bool
    label: str
    unit: str = ""
    headline_for: tuple[str, ...] = ()  # the models whose headline it is (summary, version tags)
    margin: Margin = RELATIVE_5


MEASURES = {  # the headline ones first, in the order the tables put them on top
    "iw_nll": Measure(True, "IW-NLL", "nats", ("vae",)),
    "neg_elbo": Measure(True, "−ELBO", "nats", ("vae",)),
    "recon_bce": Measure(True, "reconstruction NLL, Bernoulli", "nats", ("vae", "ae")),
    "active_units": Measure(False, "active latent units, Cov_x E[z|x] > 0.01", "", ("vae",)),
    # the VAE's likelihood, its parts, the AE's pixel error
    "bits_per_dim": Measure(True, "IW-NLL per pixel", "bits/dim"),
    "elbo_recon": Measure(True, "−ELBO's reconstruction term", "nats"),
    "elbo_kl": Measure(True, "−ELBO's KL term", "nats"),
    "recon_mse": Measure(True, "reconstruction MSE", "per pixel"),
    # interpolation paths between test images
    "ppl": Measure(True, "perceptual path length"),
    "ppl_normalized": Measure(True, "PPL / squared end distance"),
    "path_length_ratio": Measure(True, "path length / end distance"),
    "step_unevenness": Measure(True, "step unevenness"),
    "midpoint_entropy": Measure(True, "judge's entropy at the midpoint", "nats"),
    "midpoint_max_prob": Measure(False, "judge's confidence at the midpoint"),
    # decoded samples, judged by the classifier
    "entropy": Measure(True, "judge's entropy", "nats"),
    "max_prob": Measure(False, "judge's confidence"),
    "unrecognised": Measure(
        True, "share the judge does not recognise, holes", "share", margin=Margin("difference", 0.03)
    ),
}
WHERE = ("same_class", "diff_class", "samples", "standard_normal", "grid")
# the metric whose improvement moves @champion, per model (lower is better for both)
PROMOTION = {"vae": "iw_nll", "ae": "recon_bce"}


def measure(name: str) -> Measure:
    """The declaration of `name` ('diff_class.ppl' -> ppl's); ValueError if undeclared."""
    where, _, what = name.rpartition(".")
    if what not in MEASURES or (where and where not in WHERE):
        raise ValueError(f"metric {name!r} is not declared in vaectl/metric_table.py")
    return MEASURES[what]


def headline(kind: str | None = None) -> tuple[str, ...]:
    """The headline metrics (of model `kind`, or of either), in MEASURES' order."""
    return tuple(
        name for name, m in MEASURES.items() if m.headline_for and (kind is None or kind in m.headline_for)
    )
