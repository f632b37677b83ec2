"""Latent interpolation smoothness: does walking from z0 to z1 move evenly through images?

For a pair of latents and a decoder G (latent -> mean image, flattened), with x_t = G(z(t/T)):
- path-length ratio  sum_t |x_{t+1} - x_t| / |x_T - x_0|    (1 = a straight line in pixels)
- step unevenness    max_t |x_{t+1} - x_t| / mean_t |...|   (1 = even steps; a jump is large)
- path-length PPL    E_u |G(z(u)) - G(z(u + eps))|^2 / eps^2, u ~ U[0, 1 - eps]
  (perceptual-path-length style, in squared pixel units per unit of path; Karras et al. 2019
  use a learned image metric where this uses L2 in pixel space)
|.| is the Euclidean norm over the 784 pixel values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Decoder = Callable[[torch.Tensor], torch.Tensor]


def path(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, mode: str = "lerp") -> torch.Tensor:
    """Points z(t) between batches of latents z0, z1 (P, D) at fractions t (S,) -> (P, S, D)."""
    t = t.reshape(1, -1, 1)
    a, b = z0[:, None, :], z1[:, None, :]
    if mode == "lerp":
        return a + t * (b - a)
    if mode == "slerp":
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1 + 1e-7, 1 - 1e-7)
        omega = torch.acos(cos)[..., None]
        return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    raise ValueError(f"unknown interpolation mode {mode!r}")


@torch.no_grad()
def decode_path(decode: Decoder, z0: torch.Tensor, z1: torch.Tensor, steps: int,
                mode: str = "lerp") -> torch.Tensor:
    """Images along the path: (P, steps + 1, 784)."""
    zs = path(z0, z1, torch.linspace(0, 1, steps + 1, dtype=z0.dtype, device=z0.device), mode)
    return decode(zs.reshape(-1, zs.shape[-1])).reshape(len(z0), steps + 1, -1)


def path_metrics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair path-length ratio and step unevenness of decoded paths (P, T + 1, 784)."""
    steps = (images[:, 1:] - images[:, :-1]).norm(dim=-1)  # (P, T)
    chord = (images[:, -1] - images[:, 0]).norm(dim=-1).clamp_min(1e-12)
    return {
        "path_length_ratio": steps.sum(1) / chord,
        "step_unevenness": steps.max(1).values / steps.mean(1).clamp_min(1e-12),
    }


@torch.no_grad()
def path_ppl(decode: Decoder, z0: torch.Tensor, z1: torch.Tensor, epsilon: float,
             samples_per_pair: int, generator: torch.Generator, mode: str = "lerp") -> torch.Tensor:
    """Per-pair mean of |G(z(u)) - G(z(u + eps))|^2 / eps^2 over u ~ U[0, 1 - eps]."""
    u = torch.rand(samples_per_pair, generator=generator, dtype=torch.float64) * (1 - epsilon)
    ends = torch.cat([u, u + epsilon]).to(z0)
    zs = path(z0, z1, ends, mode)  # (P, 2S, D)
    x = decode(zs.reshape(-1, zs.shape[-1])).reshape(len(z0), 2 * samples_per_pair, -1)
    a, b = x[:, :samples_per_pair], x[:, samples_per_pair:]
    return ((b - a).pow(2).sum(-1) / epsilon**2).mean(1)
