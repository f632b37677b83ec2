"""One encoder/decoder skeleton (`model.arch`), two latent heads.

Skeletons: `mlp` (ReLU layers) and `gated-mlp`, the published VAE baseline's (Tomczak &
Welling's VampPrior code, reused by Exemplar VAE): gated layers h * sigmoid(g), He-initialised.
VAE head: a linear layer giving the mean and log-variance of q(z|x) (no activation: a ReLU
there would forbid negative means and variances below 1; `logvar_clip` bounds the
log-variance as that code's Hardtanh(-6, 2) does). AE head: one linear layer giving z.
The decoder returns Bernoulli logits over the 784 pixels.

The VAE's prior is N(0, I), or with `pseudo_inputs` K > 0 the VampPrior (Tomczak & Welling
2018): the equally weighted mixture of the encoder's posteriors q(z|u_k) at K learned
pseudo-images u_k, which the prior learns along with the model instead of being fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vaectl.params import PIXELS

KINDS = ("vae", "ae")
ARCHS = ("mlp", "gated-mlp")  # params.model.arch
LOG_2PI = math.log(2 * math.pi)


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
                 logvar_clip: list[float] | tuple = (), pseudo_inputs: int = 0):
        super().__init__()
        self.arch, self.hidden, self.latent_dim = arch, list(hidden), latent_dim
        self.variational, self.logvar_clip = variational, list(logvar_clip)
        self.pseudo_inputs = pseudo_inputs
        parts = skeleton(arch, self.hidden, latent_dim)
        self.encoder = parts["encoder"]()
        self.head = nn.Linear(hidden[-1], 2 * latent_dim if variational else latent_dim)
        self.decoder = parts["decoder"]()
        if arch == "gated-mlp":  # He initialisation of every linear map, as in the published code
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, (2.0 / module.in_features) ** 0.5)
        if pseudo_inputs:  # created last: the other weights stay those of the N(0, I) model
            # near-blank images, as the published code starts them (N(0.05, 0.01), kept in [0, 1])
            self.pseudo = nn.Parameter(torch.randn(pseudo_inputs, PIXELS) * 0.01 + 0.05)

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"

    def config(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "hidden": self.hidden, "latent_dim": self.latent_dim,
                "logvar_clip": self.logvar_clip, "pseudo_inputs": self.pseudo_inputs}

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

    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(means, log-variances), K x latent_dim, of the VampPrior's Gaussians: the posteriors
        of the pseudo-images, clamped to pixel values as the published Hardtanh(0, 1) does.
        None for N(0, I), whose KL and density have closed forms: the one place that asks."""
        return self.encode(self.pseudo.clamp(0.0, 1.0)) if self.pseudo_inputs else None

    def forward(self, x: torch.Tensor):
        """(logits, mu, logvar, z): z is a reparameterised sample for the VAE."""
        mu, logvar = self.encode(x)
        z = mu if logvar is None else mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar, z


def mixture_log_density(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log of (1/K) sum_k N(z; means_k, diag exp(logvars_k)), (..., D) -> (...).
    The squared distances come from two matrix products, (z^2) (1/v)^T - 2 z (m/v)^T + sum m^2/v,
    instead of a (..., K, D) tensor (500 MB per chunk of the IW-NLL), in float64 so that the
    expansion loses nothing to cancellation."""
    z64, m, lv = z.double(), means.double(), logvars.double()
    precision = torch.exp(-lv)
    squared = (z64.pow(2) @ precision.T - 2.0 * (z64 @ (m * precision).T)
               + (m.pow(2) * precision).sum(-1))
    log_components = -0.5 * (squared + lv.sum(-1) + z.shape[-1] * LOG_2PI)
    return (torch.logsumexp(log_components, dim=-1) - math.log(len(means))).to(z.dtype)


def build_model(kind: str, arch: str, hidden: list[int], latent_dim: int,
                logvar_clip: list[float] | tuple = (), pseudo_inputs: int = 0) -> AutoEncoder:
    """The VAE or its AE baseline on one skeleton; the AE has no prior, so neither the
    log-variance clip nor pseudo-inputs apply to it."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    vae = kind == "vae"
    return AutoEncoder(arch, hidden, latent_dim, variational=vae, logvar_clip=logvar_clip if vae else (),
                       pseudo_inputs=pseudo_inputs if vae else 0)


def from_config(config: dict) -> AutoEncoder:
    # keys absent in checkpoints from before their option: its default
    return build_model(config["kind"], config["arch"], config["hidden"], config["latent_dim"],
                       config.get("logvar_clip", ()), config.get("pseudo_inputs", 0))
