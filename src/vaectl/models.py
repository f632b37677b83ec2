"""One encoder/decoder skeleton (`model.arch`), two latent heads.

Skeletons: `mlp` (ReLU layers) and `gated-mlp`, the published VAE baseline's (Tomczak &
Welling's VampPrior code, reused by Exemplar VAE): gated layers h * sigmoid(g), He-initialised.
VAE head: a linear layer giving the mean and log-variance of q(z|x) (no activation: a ReLU
there would forbid negative means and variances below 1; `logvar_clip` bounds the
log-variance as that code's Hardtanh(-6, 2) does). AE head: one linear layer giving z.
The decoder returns Bernoulli logits over the 784 pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PIXELS = 28 * 28
KINDS = ("vae", "ae")
ARCHS = ("mlp", "gated-mlp")  # params.model.arch


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GatedDense(nn.Module):
    """h(x) * sigmoid(g(x)): a learned gate on each unit instead of a fixed nonlinearity.
    h and g are the two halves of one linear map: one matrix product instead of two."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


def gated_mlp(sizes: list[int]) -> list[nn.Module]:
    return [GatedDense(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]


def skeleton(arch: str, hidden: list[int], latent_dim: int) -> dict[str, Callable[[], nn.Module]]:
    """The shared parts for `arch`: encoder body (pixels -> hidden[-1] features) and decoder
    (latent -> logits), as zero-argument builders, so that the caller creates them in its own
    order (the order parameters are initialised in, and so the seeded weights)."""
    if arch == "mlp":
        return {"encoder": lambda: nn.Sequential(mlp([PIXELS, *hidden]), nn.ReLU()),
                "decoder": lambda: mlp([latent_dim, *reversed(hidden), PIXELS])}
    if arch == "gated-mlp":
        return {"encoder": lambda: nn.Sequential(*gated_mlp([PIXELS, *hidden])),
                "decoder": lambda: nn.Sequential(*gated_mlp([latent_dim, *reversed(hidden)]),
                                                 nn.Linear(hidden[0], PIXELS))}
    raise ValueError(f"unknown model.arch {arch!r} (known: {', '.join(ARCHS)})")


class AutoEncoder(nn.Module):
    """Encoder -> latent head -> decoder; `variational` picks the head, `arch` the skeleton."""

    def __init__(self, arch: str, hidden: list[int], latent_dim: int, variational: bool,
                 logvar_clip: list[float] | tuple = ()):
        super().__init__()
        self.arch, self.hidden, self.latent_dim = arch, list(hidden), latent_dim
        self.variational, self.logvar_clip = variational, list(logvar_clip)
        parts = skeleton(arch, self.hidden, latent_dim)
        self.encoder = parts["encoder"]()
        self.head = nn.Linear(hidden[-1], 2 * latent_dim if variational else latent_dim)
        self.decoder = parts["decoder"]()
        if arch == "gated-mlp":  # He initialisation of every linear map, as in the published code
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, (2.0 / module.in_features) ** 0.5)

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"

    def config(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "hidden": self.hidden, "latent_dim": self.latent_dim,
                "logvar_clip": self.logvar_clip}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of q(z|x) for the VAE; (z, None) for the AE."""
        h = self.head(self.encoder(x.flatten(1)))  # (N, 784) or (N, 28, 28); N stays dynamic in exports
        if self.variational:
            mu, logvar = h.chunk(2, dim=-1)
            if self.logvar_clip:
                logvar = logvar.clamp(*self.logvar_clip)
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


def build_model(kind: str, arch: str, hidden: list[int], latent_dim: int,
                logvar_clip: list[float] | tuple = ()) -> AutoEncoder:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    return AutoEncoder(arch, hidden, latent_dim, variational=kind == "vae",
                       logvar_clip=logvar_clip if kind == "vae" else ())


def from_config(config: dict) -> AutoEncoder:
    return build_model(config["kind"], config["arch"], config["hidden"], config["latent_dim"],
                       config.get("logvar_clip", ()))  # absent in checkpoints before the option
