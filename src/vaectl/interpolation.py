"""Latent interpolation smoothness: does walking from z0 to z1 move evenly through images?

For a pair of latents and a decoder G (latent -> mean image, flattened), with x_t = G(z(t/T)):
- path-length ratio  sum_t |x_{t+1} - x_t| / |x_T - x_0|    (1 = a straight line in pixels)
- step unevenness    max_t |x_{t+1} - x_t| / mean_t |...|   (1 = even steps; a jump is large)
- path-length PPL    E_u |G(z(u)) - G(z(u + eps))|^2 / eps^2, u ~ U[0, 1 - eps]
  (perceptual-path-length style, in squared pixel units per unit of path; Karras et al. 2019
  use a learned image metric where this uses L2 in pixel space), estimated on a midpoint
  grid of u rather than by random draws, so its Monte-Carlo error is negligible
- normalised PPL     PPL / |x_T - x_0|^2: by Cauchy-Schwarz PPL >= |x_T - x_0|^2, with
  equality exactly for a straight path at constant speed, so 1 is perfectly smooth whatever
  the end images; raw PPL also grows with how far apart the two end images are, and a model
  with blurrier reconstructions (closer ends) would look smoother by it without being so
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
def decode_path(
    decode: Decoder, z0: torch.Tensor, z1: torch.Tensor, steps: int, mode: str = "lerp"
) -> torch.Tensor:
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
def path_ppl(
    decode: Decoder,
    z0: torch.Tensor,
    z1: torch.Tensor,
    epsilon: float,
    points_per_pair: int,
    mode: str = "lerp",
) -> dict[str, torch.Tensor]:
    """Per-pair PPL, the mean of |G(z(u)) - G(z(u + eps))|^2 / eps^2 over the midpoint grid
    u_k = (k + 1/2) (1 - eps) / K, k < K, and the same divided by |G(z1) - G(z0)|^2."""
    k = points_per_pair
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k * (1 - epsilon)
    ends = torch.cat([u, u + epsilon, torch.tensor([0.0, 1.0], dtype=torch.float64)]).to(z0)
    zs = path(z0, z1, ends, mode)  # (P, 2K + 2, D)
    x = decode(zs.reshape(-1, zs.shape[-1])).reshape(len(z0), 2 * k + 2, -1)
    ppl = (x[:, k : 2 * k] - x[:, :k]).pow(2).sum(-1).mean(1) / epsilon**2
    chord_squared = (x[:, -1] - x[:, -2]).pow(2).sum(-1)
    return {"ppl": ppl, "ppl_normalized": ppl / chord_squared.clamp_min(1e-12)}
