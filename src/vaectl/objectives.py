"""Losses and likelihood bounds, all in nats per image.

Bernoulli decoder on logits summed over the 784 pixels; Gaussian posterior with a closed-form
KL to N(0, I) summed over latent dims. On continuous [0,1] targets the Bernoulli term is a
BCE "loss", not a likelihood; on binarised images it is -log p(x|z).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, summed over pixels; broadcasts. (..., 784) -> (...).
    softplus(l) - x l is binary_cross_entropy_with_logits in a form that broadcasts."""
    return (F.softplus(logits) - x * logits).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over latent dims."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def loss_terms(model, x: torch.Tensor, beta: float = 1.0):
    """Batch means of (loss, reconstruction, KL). For the VAE the loss is
    reconstruction + beta * KL (beta = 1: the negative ELBO); for the AE it is the
    reconstruction alone and KL is reported as 0."""
    logits, mu, logvar, _ = model(x)
    recon = bernoulli_nll(logits, x.reshape(logits.shape)).mean()
    if logvar is None:
        return recon, recon, torch.zeros((), device=x.device)
    kl = gaussian_kl(mu, logvar).mean()
    return recon + beta * kl, recon, kl


@torch.no_grad()
def iwae_log_likelihood(model, x: torch.Tensor, k: int, chunk: int = 500,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image (Burda et al. 2015):
    log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). k = 1 is the ELBO.
    Samples are processed `chunk` at a time for every image at once, combined with a
    running log-sum-exp, so memory is O(chunk x batch x 784) whatever k is."""
    x = x.reshape(len(x), -1)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    total = torch.full((len(x),), -math.inf, device=x.device)
    done = 0
    while done < k:
        s = min(chunk, k - done)
        eps = torch.randn((s, *mu.shape), device=x.device, dtype=mu.dtype, generator=generator)
        z = mu + eps * std  # (s, B, D)
        logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(s, len(x), -1)
        log_px_z = -bernoulli_nll(logits, x)
        log_pz = -0.5 * (LOG_2PI + z.pow(2)).sum(-1)
        log_qz = log_normal(z, mu, logvar)
        total = torch.logaddexp(total, torch.logsumexp(log_px_z + log_pz - log_qz, dim=0))
        done += s
    return total - math.log(k)
