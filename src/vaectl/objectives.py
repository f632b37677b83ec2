"""Losses and likelihood bounds, all in nats per image.

Bernoulli decoder on logits summed over the 784 pixels; Gaussian posterior with a closed-form
KL to N(0, I) summed over latent dims, or a one-sample Monte-Carlo KL to a VampPrior, which
has no closed form. On continuous [0,1] targets the Bernoulli term is a BCE "loss", not a
likelihood; on binarised images it is -log p(x|z).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from vaectl.models import LOG_2PI, mixture_log_density


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, summed over pixels; broadcasts. (..., 784) -> (...).
    softplus(l) - x l is binary_cross_entropy_with_logits in a form that broadcasts."""
    return (F.softplus(logits) - x * logits).sum(-1)


def bernoulli_nll_binary(logits: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """bernoulli_nll for binary x, given sign = 1 - 2x: the same sum of softplus(sign * l),
    in a quarter of the time. softplus(y) = relu(y) + log(1 + exp(-|y|)) with |y| = |l|, so
    sum relu(y) = (sign . l + sum |l|) / 2, and the logs of 784 factors in (1, 2] become
    the logs of 14 products of 56 (below 2^56: no overflow in float32) - torch's log1p
    and softplus kernels cost ten times its exp."""
    magnitude = logits.abs()
    linear = 0.5 * ((logits * sign).sum(-1) + magnitude.sum(-1))
    factors = torch.exp(magnitude.neg_(), out=magnitude).add_(1.0)
    return linear + torch.log(factors.unflatten(-1, (-1, 56)).prod(-1)).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over latent dims."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def log_prior_over_posterior(
    z: torch.Tensor,
    eps: torch.Tensor,
    logvar: torch.Tensor,
    components: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """log p(z) - log q(z|x) per sample, for z = mu + eps * sigma; `components` are the
    VampPrior's (means, log-variances), None for N(0, I), where log 2 pi cancels."""
    if components is None:
        return -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)
    return mixture_log_density(z, *components) + 0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)


def loss_terms(model, x: torch.Tensor, beta: float = 1.0):
    """Batch means of (loss, reconstruction, KL). For the VAE the loss is
    reconstruction + beta * KL (beta = 1: the negative ELBO); for the AE it is the
    reconstruction alone and KL is reported as 0. The KL to a VampPrior is log q(z|x) -
    log p(z) at the training sample z, an unbiased estimate (the published code's)."""
    logits, mu, logvar, z = model(x)
    recon = bernoulli_nll(logits, x.reshape(logits.shape)).mean()
    if logvar is None:
        return recon, recon, torch.zeros((), device=x.device)
    components = getattr(model, "module", model).prior_components()  # DDP wraps the model
    if components is None:
        kl = gaussian_kl(mu, logvar).mean()
    else:
        eps = (z - mu) * torch.exp(-0.5 * logvar)
        kl = -log_prior_over_posterior(z, eps, logvar, components).mean()
    return recon + beta * kl, recon, kl


def kl_to_prior(
    components: tuple[torch.Tensor, torch.Tensor] | None,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """KL(q(z|x) || p(z)) per image, p given by the model's `prior_components()`: closed form
    for N(0, I) (None; no draws), else the mean of log q - log p over `samples` draws from q."""
    if components is None:
        return gaussian_kl(mu, logvar)
    eps = torch.randn((samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
    z = mu + eps * torch.exp(0.5 * logvar)
    return -log_prior_over_posterior(z, eps, logvar, components).mean(0)


@torch.no_grad()
def iwae_log_likelihood(
    model,
    x: torch.Tensor,
    k: int,
    chunk: int = 25,
    generator: torch.Generator | None = None,
    decoder_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image (Burda et al. 2015):
    log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), p(z) the model's prior (for a
    VampPrior, the whole mixture). k = 1 is the ELBO.
    Samples are processed `chunk` at a time for every image at once, combined with a
    running log-sum-exp, so memory is O(chunk x batch x 784) whatever k is; a chunk whose
    logits stay in the CPU cache (25 samples x 100 images; 250 x 100 is 78 MB) saves a
    quarter of the time.
    `decoder_dtype` bfloat16 runs the decoder in bfloat16 (its logits come back in the
    model's dtype, and the likelihood and sums are computed there): a third less time on
    CPUs with bf16 units, 0.002 nats from float32 on the default VAE."""
    x = x.reshape(len(x), -1)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    components = model.prior_components()
    decode = model.decode
    if decoder_dtype is not None and decoder_dtype != mu.dtype:
        low = copy.deepcopy(model).to(decoder_dtype)
        decode = lambda z: low.decode(z.to(decoder_dtype)).to(mu.dtype)  # noqa: E731
    binary = bool(((x == 0) | (x == 1)).all())
    sign = 1.0 - 2.0 * x
    nll = (
        (lambda logits: bernoulli_nll_binary(logits, sign))
        if binary
        else (lambda logits: bernoulli_nll(logits, x))
    )
    total = torch.full((len(x),), -math.inf, device=x.device)
    for shape in iw_draw_shapes(k, chunk, *mu.shape):
        eps = torch.randn(shape, device=x.device, dtype=mu.dtype, generator=generator)
        total = torch.logaddexp(
            total, torch.logsumexp(log_weights(decode, nll, mu, std, logvar, eps, components), 0)
        )
    return total - math.log(k)


def iw_draw_shapes(k: int, chunk: int, batch: int, latent: int) -> list[tuple[int, int, int]]:
    """The standard-normal draws `iwae_log_likelihood` makes for a batch, in order (shards.py
    replays them to start a batch where the sequential pass would)."""
    return [(min(chunk, k - done), batch, latent) for done in range(0, k, chunk)]


def elbo_draw_shapes(
    samples: int, batch: int, latent: int, prior_mixture: bool
) -> list[tuple[int, int, int]]:
    """The draws `expected_bernoulli_nll` then `kl_to_prior` make for a batch, in order (the KL
    draws only against a mixture prior; against N(0, I) it is closed-form)."""
    return [(samples, batch, latent)] * (2 if prior_mixture else 1)


def log_weights(decode, nll, mu, std, logvar, eps, components) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for each z = mu + eps * std (eps: s x B x D),
    -log p(x|z) being `nll` of the decoded logits (s x B x 784): the importance weights of
    `iwae_log_likelihood` and of `iw_nll_given_draws` (whose eps, s x 1 x D, broadcasts)."""
    z = mu + eps * std  # (s, B, D)
    logits = decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
    return -nll(logits) + log_prior_over_posterior(z, eps, logvar, components)


def iw_nll_given_draws(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-log p(x) per image by k importance samples whose standard-normal draws are given
    (eps: k x D, the same k draws for every image, so an image's value does not depend on the
    batch it is in): the served score, exported as a program that takes its draws as input."""
    mu, logvar = model.encode(x)
    weights = log_weights(
        model.decode,
        lambda logits: bernoulli_nll(logits, x),
        mu,
        torch.exp(0.5 * logvar),
        logvar,
        eps[:, None, :],  # broadcast over the batch
        model.prior_components(),
    )
    return math.log(eps.shape[0]) - torch.logsumexp(weights, 0)


def expected_bernoulli_nll(model, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """E_q(z|x)[-log p(x|z)] per image, Monte-Carlo over `samples` draws: the ELBO's
    reconstruction term."""
    mu, logvar = model.encode(x)
    assert logvar is not None, "an expectation over q(z|x) is the VAE's alone"
    eps = torch.randn((samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
    return bernoulli_nll(model.decode(mu + eps * torch.exp(0.5 * logvar)), x).mean(0)


def reconstruction_nll(model, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z = encoder mean) per image: deterministic, for either model (the usual
    AE anomaly score)."""
    return bernoulli_nll(model.decode(model.encode(x)[0]), x)
