"""The latent distribution that generation draws from, as K equally weighted Gaussians: the
VAE's prior (N(0, I), K = 1; a VampPrior's K components); for the AE, which has none, one
full-covariance Gaussian fitted to its training codes. Evaluation samples from it and export
ships it, so both use this one definition."""

from __future__ import annotations

import torch

from vaectl.models import AutoEncoder


@torch.no_grad()
def latent_prior(model: AutoEncoder, train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(means K x D, Cholesky factors K x D x D) of the components to sample from."""
    d = model.latent_dim
    if model.variational:
        components = model.prior_components()
        if components is not None:
            means, logvars = components
            return means, torch.diag_embed(torch.exp(0.5 * logvars))
        return torch.zeros(1, d), torch.eye(d)[None]
    latents = torch.cat([model.encode(train_x[s : s + 1000])[0] for s in range(0, len(train_x), 1000)])
    cov = torch.cov(latents.T).reshape(d, d)
    return latents.mean(0)[None], torch.linalg.cholesky(cov + 1e-6 * torch.eye(d))[None]


def sample_latents(
    means: torch.Tensor, chols: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """n draws from the mixture: a uniformly chosen component, then its Gaussian. One
    component draws no index, so a single Gaussian's samples stay those it always gave."""
    eps = torch.randn(n, means.shape[-1], generator=generator).to(means.device)
    if len(means) == 1:
        return means[0] + eps @ chols[0].T
    pick = torch.randint(len(means), (n,), generator=generator).to(means.device)
    return means[pick] + (chols[pick] @ eps[:, :, None])[:, :, 0]


def moment_matched(means: torch.Tensor, chols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, Cholesky factor) of the one Gaussian with the mixture's mean and covariance:
    where a grid over the prior is laid (the 2-D holes experiment)."""
    if len(means) == 1:
        return means[0], chols[0]
    mean = means.mean(0)
    spread = means - mean
    cov = (chols @ chols.transpose(1, 2)).mean(0) + spread.T @ spread / len(means)
    return mean, torch.linalg.cholesky(cov)


@torch.no_grad()
def generate(model: AutoEncoder, train_x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n decoded mean images of latents drawn from `latent_prior`."""
    return model.mean_image(sample_latents(*latent_prior(model, train_x), n, generator))
