"""Prepared uint8 images as model inputs: [0, 1] float tensors, optionally binarised."""

from __future__ import annotations

import numpy as np
import torch

VAL_BINARIZE_SEED = 1234  # validation images are binarised once, the same for every run


def to_unit(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 784 in [0, 1] on `device`."""
    return torch.from_numpy(images.reshape(len(images), -1)).to(device).float().div_(255)


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x ~ Bernoulli(pixel): the literature's likelihood protocol on MNIST-family images."""
    return torch.bernoulli(x, generator=generator)
