"""How unlike the training data an image is (a score per image, higher = more novel), and how
well a score tells two sets of images apart (AUROC, AUPRC, FPR at 95% TPR).

Scores, each in nats per image (`bits_per_dim` converts):
- `neg_elbo`: the VAE's -ELBO, a Monte-Carlo bound on -log p(x);
- `iw_nll`: the importance-weighted -log p(x) with k samples (k = 1: the ELBO's one-sample
  estimate; the bound tightens as k grows);
- `complexity_corrected` (scoring.py, which the served score shares): -log p(x) minus the
  code length of a lossless compressor, the
  input-complexity correction of Serrà et al. (2020, "Input complexity and out-of-distribution
  detection with likelihood-based generative models"): a simple image (a blank page, a thin
  digit) gets a high likelihood from any model, and the compressor's length takes that part
  out, leaving how much better than a generic compressor (bzip2) this model codes x;
- `reconstruction`: the AE's (or the VAE's) Bernoulli NLL of x given its reconstruction at
  the encoder mean, the usual AE anomaly score.

The detection metrics treat the novel set as the positive class and a higher score as more
novel; ties count half, as in the Mann-Whitney statistic.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vaectl import scoring
from vaectl.archs import PIXELS
from vaectl.metric_table import Margin
from vaectl.objectives import expected_bernoulli_nll, iwae_log_likelihood, kl_to_prior, reconstruction_nll

NATS_PER_BIT = scoring.NATS_PER_BIT
SCORES = ("neg_elbo", "iw_nll", "complexity_corrected", "reconstruction")
TPR = 0.95  # FPR is read where this share of the novel set is flagged


def bits_per_dim(nats: np.ndarray) -> np.ndarray:
    return np.asarray(nats) / (PIXELS * NATS_PER_BIT)


@torch.no_grad()
def neg_elbo(model, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """-ELBO per image: E_q[-log p(x|z)] over `samples` draws plus KL(q(z|x) || p(z))."""
    mu, logvar = model.encode(x)
    recon = expected_bernoulli_nll(model, x, samples, generator)
    return recon + kl_to_prior(model.prior_components(), mu, logvar, samples, generator)


IW_CHUNK = 25  # samples decoded at once per batch by `iw_nll`


@torch.no_grad()
def iw_nll(model, x: torch.Tensor, k: int, generator: torch.Generator, chunk: int = IW_CHUNK) -> torch.Tensor:
    return -iwae_log_likelihood(model, x, k, chunk, generator)


@torch.no_grad()
def reconstruction(model, x: torch.Tensor) -> torch.Tensor:
    return reconstruction_nll(model, x)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def auroc(normal: np.ndarray, novel: np.ndarray) -> float:
    """P(a novel image scores above a normal one), ties counted half: the area under the ROC
    curve, from the ranks of the pooled scores (Mann-Whitney U / (n m))."""
    normal, novel = np.asarray(normal, dtype=np.float64), np.asarray(novel, dtype=np.float64)
    ranks = _ranks(np.concatenate([normal, novel]))[len(normal) :]
    u = ranks.sum() - len(novel) * (len(novel) + 1) / 2
    return float(u / (len(normal) * len(novel)))


def average_precision(normal: np.ndarray, novel: np.ndarray) -> float:
    """The area under the precision-recall curve of flagging novel images, as a step sum over
    the distinct score thresholds (tied scores flagged together): sum (R_t - R_t-1) P_t."""
    scores = np.concatenate([normal, novel]).astype(np.float64)
    positive = np.r_[np.zeros(len(normal)), np.ones(len(novel))]
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    true_pos = np.cumsum(positive)[last_of_tie]
    flagged = last_of_tie + 1
    recall = true_pos / len(novel)
    precision = true_pos / flagged
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(normal: np.ndarray, novel: np.ndarray, tpr: float = TPR) -> float:
    """The share of normal images flagged by the highest threshold that flags at least `tpr`
    of the novel ones (flagged: score >= threshold)."""
    ranked = np.sort(np.asarray(novel, dtype=np.float64))[::-1]
    threshold = ranked[math.ceil(tpr * len(ranked)) - 1]
    return float(np.mean(np.asarray(normal) >= threshold))


DETECTION = {"auroc": auroc, "auprc": average_precision, "fpr_at_95_tpr": fpr_at_tpr}
HIGHER_IS_BETTER = {"auroc": True, "auprc": True, "fpr_at_95_tpr": False}
MARGIN = Margin("difference", 0.02)  # detection metrics closer than this are equivalent


def detection(
    normal: dict[str, np.ndarray],
    novel: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    resamples: int,
    rng: np.random.Generator,
) -> dict:
    """Each score's detection metrics with 95% percentile-bootstrap intervals, and for each
    (first, second) score pair their difference with its interval and verdict. Every score
    was computed on the same images, so one draw of images (normal and novel resampled
    independently, each set its own units) serves all scores: the differences are paired."""
    from vaectl.report import bootstrap_verdict, interval

    n, m = len(next(iter(normal.values()))), len(next(iter(novel.values())))
    picks = [(rng.integers(0, n, n), rng.integers(0, m, m)) for _ in range(resamples)]
    boots: dict[tuple[str, str], np.ndarray] = {}
    out: dict[str, dict] = {"scores": {}, "comparisons": {}}
    for score in normal:
        a, b = np.asarray(normal[score], dtype=np.float64), np.asarray(novel[score], dtype=np.float64)
        out["scores"][score] = {}
        for name, metric in DETECTION.items():
            boots[score, name] = np.array([metric(a[i], b[j]) for i, j in picks])
            out["scores"][score][name] = {"value": metric(a, b), "ci": interval(boots[score, name])}
    for first, second in pairs:
        key = f"{first} - {second}"
        out["comparisons"][key] = {}
        for name in DETECTION:
            difference = boots[first, name] - boots[second, name]
            value = out["scores"][first][name]["value"] - out["scores"][second][name]["value"]
            verdict = bootstrap_verdict(difference, None, MARGIN, not HIGHER_IS_BETTER[name])
            out["comparisons"][key][name] = {"value": value, "ci": interval(difference), "verdict": verdict}
    return out
