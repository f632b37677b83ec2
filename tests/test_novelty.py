"""Novelty scores and detection metrics on cases whose answers are known."""

import math

import numpy as np
import pytest
import torch

from vaectl import novelty, scoring
from vaectl.models import AutoEncoder
from vaectl.objectives import bernoulli_nll
from vaectl.params import ModelParams

RNG = np.random.default_rng(0)


def test_perfectly_separated_sets_score_one_and_no_false_positives():
    normal, novel = RNG.normal(0, 1, 300), RNG.normal(10, 1, 200)
    assert novelty.auroc(normal, novel) == 1.0
    assert novelty.average_precision(normal, novel) == 1.0
    assert novelty.fpr_at_tpr(normal, novel) == 0.0
    # the other way round, every novel image below every normal one
    assert novelty.auroc(novel, normal) == 0.0
    assert novelty.fpr_at_tpr(novel, normal) == 1.0


def test_identical_sets_are_chance():
    """The same scores twice: AUROC 1/2 exactly (ties count half), average precision the
    novel share, and flagging 95% of the novel images flags 95% of the normal ones."""
    scores = RNG.normal(0, 1, 400)
    assert novelty.auroc(scores, scores.copy()) == 0.5
    assert novelty.average_precision(scores, scores.copy()) == pytest.approx(0.5, abs=0.06)
    assert novelty.fpr_at_tpr(scores, scores.copy()) == 0.95
    tied = np.zeros(300)
    assert novelty.auroc(tied, np.zeros(100)) == 0.5
    assert novelty.average_precision(tied, np.zeros(100)) == 0.25  # all flagged at once


def test_auroc_is_the_mann_whitney_probability_on_a_small_case():
    # pairs (novel above normal): 2 > {1}, 4 > {1, 3}, 3 > {1} and 3 = 3 a tie: (1 + 2 + 1.5) / (3 * 2)
    assert novelty.auroc(np.array([1.0, 3.0]), np.array([2.0, 4.0, 3.0])) == pytest.approx(4.5 / 6)


def test_average_precision_on_a_small_case():
    """Scores 4 (novel), 3 (normal), 2 (novel), 1 (normal): precision 1 at recall 1/2, 2/3 at
    recall 1: AP = 1/2 * 1 + 1/2 * 2/3."""
    assert novelty.average_precision(np.array([3.0, 1.0]), np.array([4.0, 2.0])) == pytest.approx(5 / 6)


def test_fpr_at_tpr_reads_the_threshold_that_flags_95_percent():
    novel = np.arange(100, dtype=float)  # flagging >= 5 flags 95 of 100
    normal = np.array([4.0, 5.0, 6.0, 7.0])
    assert novelty.fpr_at_tpr(normal, novel) == 0.75


def test_bits_per_dim_of_a_coin_flip_per_pixel_is_one():
    assert novelty.bits_per_dim(np.array([784 * math.log(2)])) == pytest.approx([1.0])


def test_code_length_grows_with_the_image_and_is_deterministic():
    blank, stripes = torch.zeros(1, 784), (torch.arange(784) % 2).float().reshape(1, 784)
    noise = torch.bernoulli(torch.full((1, 784), 0.5), generator=torch.Generator().manual_seed(0))
    bits = scoring.compressed_bits(torch.cat([blank, stripes, noise]))
    assert bits[0] < bits[2] and bits[1] < bits[2]
    assert bits[2] > 784  # 784 random bits do not compress
    assert np.array_equal(bits, scoring.compressed_bits(torch.cat([blank, stripes, noise])))
    # bzip2's own known answer: 98 zero bytes (a blank image) take 39 bytes
    assert bits[0] == 8 * 39


def test_complexity_correction_subtracts_the_code_length_in_nats():
    x = torch.zeros(2, 784)
    corrected = scoring.complexity_corrected(np.array([100.0, 50.0]), x.numpy())
    assert corrected == pytest.approx(np.array([100.0, 50.0]) - scoring.compressed_bits(x) * math.log(2))


def tiny(variational: bool) -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder(ModelParams(hidden=[16]), 3, variational).eval()


def test_reconstruction_is_the_bernoulli_nll_at_the_encoder_mean():
    model = tiny(False)
    x = torch.bernoulli(torch.full((5, 784), 0.3), generator=torch.Generator().manual_seed(1))
    expected = bernoulli_nll(model.decode(model.encode(x)[0]), x)
    assert torch.equal(novelty.reconstruction(model, x), expected)


def test_iw_nll_tightens_toward_the_likelihood_below_the_elbo():
    """-ELBO >= IW-NLL(k = 1) in expectation and IW-NLL decreases in k (Burda et al. 2016)."""
    model = tiny(True)
    x = torch.bernoulli(torch.full((20, 784), 0.3), generator=torch.Generator().manual_seed(1))
    elbo = novelty.neg_elbo(model, x, 2000, torch.Generator().manual_seed(2)).mean()
    k1 = novelty.iw_nll(model, x.repeat(100, 1), 1, torch.Generator().manual_seed(3)).mean()
    k500 = novelty.iw_nll(model, x, 500, torch.Generator().manual_seed(3)).mean()
    assert abs(float(elbo - k1)) < 1.0  # the same bound, estimated two ways
    assert k500 < elbo


def test_detection_intervals_cover_and_verdicts_follow_them():
    normal = {"good": RNG.normal(0, 1, 300), "chance": RNG.normal(0, 1, 300)}
    novel = {"good": RNG.normal(3, 1, 300), "chance": RNG.normal(0, 1, 300)}
    out = novelty.detection(
        normal, novel, [("good", "chance"), ("chance", "chance")], 500, np.random.default_rng(0)
    )
    good, chance = out["scores"]["good"]["auroc"], out["scores"]["chance"]["auroc"]
    assert good["ci"][0] < good["value"] < good["ci"][1] and good["ci"][0] > 0.95
    assert chance["ci"][0] < 0.5 < chance["ci"][1]
    assert out["comparisons"]["good - chance"]["auroc"]["verdict"] == "better"
    assert out["comparisons"]["good - chance"]["fpr_at_95_tpr"]["verdict"] == "better"  # lower FPR
    same = out["comparisons"]["chance - chance"]["auroc"]
    assert same["value"] == 0 and same["ci"] == [0, 0] and same["verdict"] == "equivalent"


def independent_iw_nll(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) from torch.distributions, z_i = mu + eps_i sigma."""
    from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal

    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + eps[:, None, :] * std  # k x B x D
    components = model.prior_components()
    if components is None:
        prior = Independent(Normal(torch.zeros_like(mu[0]), torch.ones_like(mu[0])), 1)
    else:
        means, logvars = components
        prior = MixtureSameFamily(
            Categorical(logits=torch.zeros(len(means))),
            Independent(Normal(means, torch.exp(0.5 * logvars)), 1),
        )
    log_w = (
        Independent(Bernoulli(logits=model.decode(z)), 1).log_prob(x)
        + prior.log_prob(z)
        - Independent(Normal(mu, std), 1).log_prob(z)
    )
    return math.log(len(eps)) - torch.logsumexp(log_w, 0)


@pytest.mark.parametrize("pseudo_inputs", [0, 4])
def test_the_served_iw_nll_with_given_draws_is_the_importance_weighted_likelihood(pseudo_inputs):
    """The served score's likelihood against torch.distributions, for N(0, I) and a VampPrior;
    one image's value does not depend on the batch it is in."""
    from vaectl.objectives import iw_nll_given_draws

    torch.manual_seed(0)
    model = AutoEncoder(ModelParams(hidden=[16], pseudo_inputs=pseudo_inputs), 3, True).eval()
    x = torch.bernoulli(torch.full((6, 784), 0.3), generator=torch.Generator().manual_seed(1))
    eps = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        served = iw_nll_given_draws(model, x, eps)
        torch.testing.assert_close(served, independent_iw_nll(model, x, eps), rtol=0, atol=1e-4)
        alone = torch.cat([iw_nll_given_draws(model, x[i : i + 1], eps) for i in range(len(x))])
    torch.testing.assert_close(alone, served, rtol=0, atol=1e-4)


def test_the_served_score_binarises_against_fixed_uniforms_and_keeps_binary_images():
    uniforms, eps = scoring.fixed_draws(5)
    assert uniforms.shape == (784,) and eps.shape == (scoring.SAMPLES, 5)
    assert np.array_equal(uniforms, scoring.fixed_draws(5)[0])  # fixed by SEED
    binary = (np.random.default_rng(0).random((3, 784)) < 0.5).astype(np.float32)
    assert np.array_equal(scoring.binarised(binary, uniforms), binary)
    grey = np.full((1, 784), 0.3, np.float32)
    assert scoring.binarised(grey, uniforms).mean() == pytest.approx(0.3, abs=0.05)
    assert np.array_equal(scoring.binarised(grey, uniforms)[0], (uniforms < 0.3).astype(np.float32))


def test_the_threshold_flags_the_calibration_quantile_of_the_validation_scores():
    found = np.arange(1000, dtype=np.float64)
    calibration = scoring.calibrated(found, True, 1000)
    assert calibration["threshold"] == pytest.approx(989.01)  # numpy's linear quantile of 0..999
    assert np.count_nonzero(found > calibration["threshold"]) == 10  # 1% of them
    assert calibration["score"] == "iw_nll_complexity_corrected"
    assert scoring.calibrated(found, False, 1000)["importance_samples"] == 0


def test_the_roc_curve_counts_scores_at_or_above_each_threshold():
    from vaectl.figures import _roc

    fpr, tpr = _roc(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert fpr.tolist() == [0, 0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1, 1]
    normal, novel = RNG.integers(0, 20, 300).astype(float), RNG.integers(5, 25, 200).astype(float)  # ties
    fpr, tpr = _roc(normal, novel)
    thresholds = np.unique(np.concatenate([normal, novel]))[::-1]
    assert fpr.tolist() == [0.0] + [float((normal >= t).mean()) for t in thresholds]
    assert tpr.tolist() == [0.0] + [float((novel >= t).mean()) for t in thresholds]


@torch.no_grad()
def test_ood_scores_are_the_same_bytes_on_1_2_and_3_workers():
    """Two sets (4 and 2 batches) scored on 1, 2 and 3 spawned processes give the bytes of
    scoring each set in one process, batch after batch, from its two seeded generators (the
    -ELBO's, the IW-NLL's). A VampPrior VAE, so the KL makes draws. Seen red with nothing
    replayed before a batch and with the -ELBO's and IW-NLL's generators swapped in the replay."""
    from vaectl import ood
    from vaectl.params import parse_params

    torch.manual_seed(0)
    vae = AutoEncoder(ModelParams(hidden=[16], pseudo_inputs=3), 3, True).eval()
    models = {"vae": vae, "ae": tiny(False)}
    params = parse_params({"ood": {"iw_samples": 30, "elbo_samples": 5}}).ood
    sets = {
        name: torch.bernoulli(torch.full((n, 784), p), generator=torch.Generator().manual_seed(n))
        for name, n, p in (("test split", 37, 0.2), ("noise", 20, 0.5))
    }
    reference = {}
    for name, x in sets.items():
        elbo_gen, iw_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
        reference[name] = {
            "vae.iw_nll": torch.cat(
                [novelty.iw_nll(vae, x[s : s + 10], 30, iw_gen) for s in range(0, len(x), 10)]
            ),
            "vae.neg_elbo": torch.cat(
                [novelty.neg_elbo(vae, x[s : s + 10], 5, elbo_gen) for s in range(0, len(x), 10)]
            ),
        }
    for workers in (1, 2, 3):
        scores = ood.score_sets(models, sets, params, 10, 7, workers)
        assert list(scores) == list(sets)
        for name, expected in reference.items():
            assert set(scores[name]) == set(ood.SCORE_NAMES)
            for score, values in expected.items():
                assert scores[name][score].tobytes() == values.double().numpy().tobytes(), (
                    workers,
                    name,
                    score,
                )
