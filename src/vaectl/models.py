"""One encoder/decoder skeleton (`model.arch`: an MLP), two latent heads.

VAE head: a linear layer giving the mean and log-variance of q(z|x) (no activation: a ReLU
there would forbid negative means and variances below 1). AE head: one linear layer giving z.
The decoder returns Bernoulli logits over the 784 pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PIXELS = 28 * 28
KINDS = ("vae", "ae")
ARCHS = ("mlp",)  # params.model.arch


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def skeleton(arch: str, hidden: list[int], latent_dim: int) -> dict[str, Callable[[], nn.Module]]:
    """The shared parts for `arch`: encoder body (pixels -> hidden[-1] features) and decoder
    (latent -> logits), as zero-argument builders, so that the caller creates them in its own
    order (the order parameters are initialised in, and so the seeded weights)."""
    if arch == "mlp":
        return {"encoder": lambda: nn.Sequential(mlp([PIXELS, *hidden]), nn.ReLU()),
                "decoder": lambda: mlp([latent_dim, *reversed(hidden), PIXELS])}
    raise ValueError(f"unknown model.arch {arch!r} (known: {', '.join(ARCHS)})")


class AutoEncoder(nn.Module):
    """Encoder -> latent head -> decoder; `variational` picks the head, `arch` the skeleton."""

    def __init__(self, arch: str, hidden: list[int], latent_dim: int, variational: bool):
        super().__init__()
        self.arch, self.hidden, self.latent_dim = arch, list(hidden), latent_dim
        self.variational = variational
        parts = skeleton(arch, self.hidden, latent_dim)
        self.encoder = parts["encoder"]()
        self.head = nn.Linear(hidden[-1], 2 * latent_dim if variational else latent_dim)
        self.decoder = parts["decoder"]()

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"

    def config(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "hidden": self.hidden, "latent_dim": self.latent_dim}

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


def build_model(kind: str, arch: str, hidden: list[int], latent_dim: int) -> AutoEncoder:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    return AutoEncoder(arch, hidden, latent_dim, variational=kind == "vae")


def from_config(config: dict) -> AutoEncoder:
    return build_model(config["kind"], config["arch"], config["hidden"], config["latent_dim"])
