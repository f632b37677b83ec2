"""The served novelty score: one definition for `vaectl export`, which calibrates its threshold
on the validation split, and for the registered pyfunc's `score` mode, which applies it.

An image's score, in nats (higher = more novel), is computed on the image binarised against
fixed uniforms (a Bernoulli draw of each pixel, as the likelihoods are measured), through the
exported `score` program:
- VAE: the k-sample importance-weighted -log p(x) (k = SAMPLES, fixed standard-normal draws)
  minus the image's bzip2 code length: the input-complexity correction of Serra et al.
  (2020), the score that told Fashion-MNIST from MNIST where the raw likelihood failed
  (docs/results.md);
- AE: the reconstruction NLL.
Every draw is fixed by SEED and shared by every image, so a score depends on the image alone:
the same whether it is sent alone, in a batch of 64 or through `vaectl predict`.

Bundled with the registered model (it imports numpy, the standard library and vaectl.archs'
constants at load; torch only to call the program).
"""

from __future__ import annotations

import bz2
import math

import numpy as np

from vaectl.archs import PIXELS

NATS_PER_BIT = math.log(2)
SAMPLES = 16  # the served IW-NLL's k: cheap (benchmarks/serve_latency.py measures it)
SEED = 0
QUANTILE = 0.99  # the threshold: this quantile of the validation split's scores
SCORE_NAMES = {True: "iw_nll_complexity_corrected", False: "reconstruction_nll"}  # by variational


def compressed_bits(binary: np.ndarray) -> np.ndarray:
    """Each binary image's code length in bits under bzip2 (level 9) of its 784 pixels packed
    8 to a byte: the generic compressor of the complexity correction. On Fashion-MNIST
    against MNIST it separated best of those tried (docs/results.md: bz2, PNG, zlib, LZMA),
    and bzip2's output has not changed since its 1.0 format."""
    pixels = np.asarray(binary).reshape(len(binary), PIXELS) > 0.5
    return np.array(
        [8 * len(bz2.compress(np.packbits(image).tobytes(), 9)) for image in pixels], dtype=np.float64
    )


def complexity_corrected(nll_nats: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """Serra et al.'s S(x) = -log2 p(x) - L(x), in nats: the likelihood's code length minus
    the generic compressor's code length of the same binary image."""
    return np.asarray(nll_nats, dtype=np.float64) - compressed_bits(binary) * NATS_PER_BIT


def fixed_draws(latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(uniforms 784, standard normals SAMPLES x latent_dim), float32, from SEED."""
    rng = np.random.default_rng(SEED)
    uniforms = rng.random(PIXELS, dtype=np.float32)
    return uniforms, rng.standard_normal((SAMPLES, latent_dim), dtype=np.float32)


def binarised(pixels: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """N x 784 pixels in [0, 1] -> 0/1 float32: a pixel is 1 where its uniform lies below its
    intensity (binary images come back unchanged)."""
    return (uniforms < pixels).astype(np.float32)


def scores(program, latent_dim: int | None, pixels: np.ndarray) -> np.ndarray:
    """Each image's score (float64 nats) by the exported `score` program: latent_dim given
    for the VAE (whose program takes the draws), None for the AE."""
    import torch

    uniforms, eps = fixed_draws(latent_dim or 1)
    binary = binarised(np.asarray(pixels, dtype=np.float32).reshape(len(pixels), PIXELS), uniforms)
    with torch.no_grad():
        if latent_dim is None:
            return program(torch.from_numpy(binary)).numpy().astype(np.float64)
        nll = program(torch.from_numpy(binary), torch.from_numpy(eps)).numpy()
    return complexity_corrected(nll, binary)


def calibrated(validation_scores: np.ndarray, variational: bool, images: int) -> dict:
    """What the served score is and where it flags an image: recorded beside the program
    (score.json), on the registered version's tags, and in the model card."""
    return {
        "score": SCORE_NAMES[variational],
        "units": "nats per image; higher = more novel",
        "threshold": float(np.quantile(validation_scores, QUANTILE)),
        "quantile": QUANTILE,
        "calibration": f"validation split, {images} images",
        "importance_samples": SAMPLES if variational else 0,
        "seed": SEED,
        "flag": "out_of_distribution = score > threshold",
    }
