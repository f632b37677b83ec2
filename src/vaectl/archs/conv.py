"""`conv`: a small convolutional skeleton. `model.hidden` is [channels..., features]: one or
two 4x4 stride-2 convolutions (28 -> 14 -> 7 pixels a side) with those channel counts, then a
ReLU dense layer of `features` units; the decoder mirrors it with transposed convolutions
(7 -> 14 -> 28) ending in one channel of logits. PyTorch's default initialisation."""

from __future__ import annotations

from vaectl.archs import PIXELS, SIDE, dense_count

KERNEL, STRIDE, PADDING = 4, 2, 1  # each layer halves (encoder) or doubles (decoder) the side


def check(hidden: list[int]) -> str | None:
    if not 2 <= len(hidden) <= 3:
        return (
            "model.arch conv needs model.hidden = [channels, features] or [channels, channels, "
            f"features] (one or two convolutions), got {len(hidden)} sizes"
        )
    return None


def features(hidden: list[int]) -> int:
    return hidden[-1]


def _shape(hidden: list[int]) -> tuple[list[int], int, int]:
    """(conv channels, side of the last feature map, its flattened size)."""
    channels = hidden[:-1]
    side = SIDE // STRIDE ** len(channels)
    return channels, side, channels[-1] * side * side


def _conv_count(channels: list[int]) -> int:
    return sum((a * KERNEL * KERNEL + 1) * b for a, b in zip(channels[:-1], channels[1:], strict=True))


def parameter_count(hidden: list[int], latent_dim: int) -> int:
    channels, _, flat = _shape(hidden)
    return (
        _conv_count([1, *channels])
        + dense_count([flat, hidden[-1]])
        + dense_count([latent_dim, hidden[-1], flat])
        + _conv_count([*reversed(channels), 1])
    )


def activation_floats(hidden: list[int], latent_dim: int) -> int:
    channels, _, flat = _shape(hidden)
    maps = sum(c * (SIDE // STRIDE ** (i + 1)) ** 2 for i, c in enumerate(channels))
    # each layer's output and its ReLU's, both sides: feature maps, dense features, the flat map
    return 2 * PIXELS + 2 * 2 * (maps + hidden[-1]) + 2 * flat


def build(hidden: list[int], latent_dim: int):
    from torch import nn

    from vaectl.archs.layers import Batched

    channels, side, flat = _shape(hidden)

    def encoder() -> nn.Module:
        modules: list[nn.Module] = [nn.Unflatten(1, (1, SIDE, SIDE))]
        for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True):
            modules += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), nn.ReLU()]
        return nn.Sequential(*modules, nn.Flatten(), nn.Linear(flat, hidden[-1]), nn.ReLU())

    def decoder() -> nn.Module:
        modules: list[nn.Module] = [
            nn.Linear(latent_dim, hidden[-1]),
            nn.ReLU(),
            nn.Linear(hidden[-1], flat),
            nn.ReLU(),
            nn.Unflatten(1, (channels[-1], side, side)),
        ]
        back = [*reversed(channels), 1]
        for c_in, c_out in zip(back[:-1], back[1:], strict=True):
            modules += [nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING), nn.ReLU()]
        return Batched(nn.Sequential(*modules[:-1], nn.Flatten()))  # no ReLU on the logits

    return encoder, decoder


def initialise(model) -> None:
    """PyTorch's defaults, drawn as the layers are created."""
