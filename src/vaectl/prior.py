"""The latent distribution that generation draws from: the VAE's prior N(0, I); for the AE,
which has none, a full-covariance Gaussian fitted to its training codes. Evaluation samples
from it and export ships it, so both use this one definition."""

from __future__ import annotations

import torch

from vaectl.models import AutoEncoder


@torch.no_grad()
def latent_prior(model: AutoEncoder, train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, Cholesky factor) of the latent distribution to sample from."""
    if model.variational:
        return torch.zeros(model.latent_dim), torch.eye(model.latent_dim)
    latents = torch.cat([model.encode(train_x[s : s + 1000])[0] for s in range(0, len(train_x), 1000)])
    cov = torch.cov(latents.T).reshape(model.latent_dim, model.latent_dim)
    return latents.mean(0), torch.linalg.cholesky(cov + 1e-6 * torch.eye(model.latent_dim))


@torch.no_grad()
def generate(model: AutoEncoder, train_x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n decoded mean images of latents drawn from `latent_prior`."""
    mean, chol = latent_prior(model, train_x)
    z = mean + torch.randn(n, model.latent_dim, generator=generator) @ chol.T
    return model.mean_image(z)
