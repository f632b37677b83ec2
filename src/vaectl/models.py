"""One encoder/decoder skeleton (`model.arch`), two latent heads.

Skeletons: vaectl.archs (`mlp`, `gated-mlp`, `conv`), each owning its layers and their
initialisation. VAE head: a linear layer giving the mean and log-variance of q(z|x) (no activation: a ReLU
there would forbid negative means and variances below 1; `logvar_clip` bounds the
log-variance as that code's Hardtanh(-6, 2) does). AE head: one linear layer giving z.
The decoder returns Bernoulli logits over the 784 pixels.

The VAE's prior is N(0, I), or with `pseudo_inputs` K > 0 the VampPrior (Tomczak & Welling
2018): the equally weighted mixture of the encoder's posteriors q(z|u_k) at K learned
pseudo-images u_k, which the prior learns along with the model instead of being fixed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaectl.archs import PIXELS, architecture
from vaectl.layout import KINDS
from vaectl.params import ModelParams

LOG_2PI = math.log(2 * math.pi)


class AutoEncoder(nn.Module):
    """Encoder -> latent head -> decoder; `variational` picks the head, `arch` the skeleton."""

    def __init__(self, model: ModelParams, latent_dim: int, variational: bool):
        super().__init__()
        self.arch, self.hidden, self.latent_dim = model.arch, list(model.hidden), latent_dim
        self.variational, self.logvar_clip = variational, list(model.logvar_clip)
        self.pseudo_inputs = model.pseudo_inputs
        arch = architecture(model.arch)
        encoder, decoder = arch.build(self.hidden, latent_dim)
        self.encoder = encoder()
        self.head = nn.Linear(arch.features(self.hidden), 2 * latent_dim if variational else latent_dim)
        self.decoder = decoder()
        arch.initialise(self)
        if self.pseudo_inputs:  # created last: the other weights stay those of the N(0, I) model
            # near-blank images, as the published code starts them (N(0.05, 0.01), kept in [0, 1])
            self.pseudo = nn.Parameter(torch.randn(self.pseudo_inputs, PIXELS) * 0.01 + 0.05)

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "hidden": self.hidden,
            "latent_dim": self.latent_dim,
            "logvar_clip": self.logvar_clip,
            "pseudo_inputs": self.pseudo_inputs,
        }

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
        if not self.pseudo_inputs:
            return None
        means, logvars = self.encode(self.pseudo.clamp(0.0, 1.0))
        assert logvars is not None, "pseudo-inputs are the VAE's alone"
        return means, logvars

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
    squared = z64.pow(2) @ precision.T - 2.0 * (z64 @ (m * precision).T) + (m.pow(2) * precision).sum(-1)
    log_components = -0.5 * (squared + lv.sum(-1) + z.shape[-1] * LOG_2PI)
    return (torch.logsumexp(log_components, dim=-1) - math.log(len(means))).to(z.dtype)


def build_model(kind: str, model: ModelParams, latent_dim: int) -> AutoEncoder:
    """The VAE or its AE baseline on one skeleton; the AE has no prior, so neither the
    log-variance clip nor pseudo-inputs apply to it."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    if kind == "ae":
        model = ModelParams(arch=model.arch, hidden=model.hidden)
    return AutoEncoder(model, latent_dim, variational=kind == "vae")


def from_config(config: dict) -> AutoEncoder:
    # keys absent in checkpoints from before their option: its default
    model = ModelParams(
        arch=config["arch"],
        hidden=config["hidden"],
        logvar_clip=config.get("logvar_clip", []),
        pseudo_inputs=config.get("pseudo_inputs", 0),
    )
    return build_model(config["kind"], model, config["latent_dim"])
