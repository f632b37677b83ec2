"""One MLP encoder/decoder skeleton, two latent heads.

VAE head: a linear layer giving the mean and log-variance of q(z|x) (no activation: a ReLU
there would forbid negative means and variances below 1). AE head: one linear layer giving z.
The decoder returns Bernoulli logits over the 784 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

PIXELS = 28 * 28
KINDS = ("vae", "ae")


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """Encoder -> latent head -> decoder; `variational` picks the head."""

    def __init__(self, hidden: list[int], latent_dim: int, variational: bool):
        super().__init__()
        self.hidden, self.latent_dim, self.variational = list(hidden), latent_dim, variational
        head_width = 2 * latent_dim if variational else latent_dim
        self.encoder = nn.Sequential(mlp([PIXELS, *hidden]), nn.ReLU())
        self.head = nn.Linear(hidden[-1], head_width)
        self.decoder = mlp([latent_dim, *reversed(hidden), PIXELS])

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"

    def config(self) -> dict:
        return {"kind": self.kind, "hidden": self.hidden, "latent_dim": self.latent_dim}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of q(z|x) for the VAE; (z, None) for the AE."""
        h = self.head(self.encoder(x.flatten(1)))  # (N, 784) or (N, 28, 28); N stays dynamic in exports
        if self.variational:
            mu, logvar = h.chunk(2, dim=-1)
            return mu, logvar
        return h, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits over the 784 pixels."""
        return self.decoder(z)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """The decoded image: pixel probabilities in [0, 1], flattened."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean image at the encoder mean (the AE's code): deterministic, no sampling."""
        return self.mean_image(self.encode(x)[0])

    def forward(self, x: torch.Tensor):
        """(logits, mu, logvar, z): z is a reparameterised sample for the VAE."""
        mu, logvar = self.encode(x)
        z = mu if logvar is None else mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar, z


def build_model(kind: str, hidden: list[int], latent_dim: int) -> AutoEncoder:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    return AutoEncoder(hidden, latent_dim, variational=kind == "vae")


def from_config(config: dict) -> AutoEncoder:
    return build_model(config["kind"], config["hidden"], config["latent_dim"])
