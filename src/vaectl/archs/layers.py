"""Layers an architecture needs beyond torch.nn (imported by its `build`, with torch)."""

from __future__ import annotations

import torch
from torch import nn


class GatedDense(nn.Module):
    """h(x) * sigmoid(g(x)): a learned gate on each unit instead of a fixed nonlinearity.
    h and g are the two halves of one linear map: one matrix product instead of two."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class Batched(nn.Module):
    """`inner` on (N, D) rows applied to (..., D): the likelihood estimators decode latents
    shaped (samples, images, D), which convolutions (4-D inputs only) cannot take as they are."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
