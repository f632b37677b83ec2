"""The encoder/decoder skeletons `model.arch` names: one module here each, shared by the VAE
and its AE baseline (the two differ only in the latent head, vaectl.models).

An architecture module imports nothing heavy at the top (params reads its sizes to bound a
stage's memory before torch is imported) and declares:

- `check(hidden) -> str | None`: why `model.hidden` does not fit it (None: it fits);
- `features(hidden) -> int`: the width of the encoder's output, the latent head's input;
- `parameter_count(hidden, latent_dim) -> int`: the encoder's and decoder's weights and biases;
- `activation_floats(hidden, latent_dim) -> int`: the floats one image's forward pass puts
  out, input and logits included (the latent head's are counted by vaectl.params);
- `build(hidden, latent_dim) -> (encoder, decoder)`: zero-argument builders, so that the model
  creates them in its own order (the order parameters are initialised in, hence the seeded
  weights); the encoder maps (N, 784) pixels to features, the decoder latents to 784 logits;
- `initialise(model)`: its initialisation of the whole model, latent head included.

A new architecture is its module plus its name in `Arch` (docs/pipeline.md, "where to change").
"""

from __future__ import annotations

import importlib
import typing
from types import ModuleType
from typing import Literal

SIDE = 28  # every dataset's images are SIDE x SIDE, one channel
PIXELS = SIDE * SIDE
Arch = Literal["mlp", "gated-mlp", "conv"]  # params.model.arch; module vaectl.archs.<name with _>


def architecture(name: str) -> ModuleType:
    if name not in typing.get_args(Arch):
        raise ValueError(f"unknown model.arch {name!r} (known: {', '.join(typing.get_args(Arch))})")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def dense_count(widths: list[int], gate: int = 1) -> int:
    """Weights and biases of the linear maps widths[0] -> widths[1] -> ..., each `gate` times."""
    return sum(gate * (a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
