"""`mlp`: ReLU layers 784 -> hidden... on the encoder side, mirrored by the decoder;
PyTorch's default initialisation."""

from __future__ import annotations

from vaectl.archs import PIXELS, dense_count


def check(hidden: list[int]) -> str | None:
    return None


def features(hidden: list[int]) -> int:
    return hidden[-1]


def parameter_count(hidden: list[int], latent_dim: int) -> int:
    return dense_count([PIXELS, *hidden]) + dense_count([latent_dim, *reversed(hidden), PIXELS])


def activation_floats(hidden: list[int], latent_dim: int) -> int:
    return 2 * PIXELS + 2 * 2 * sum(hidden)  # each layer's output and its ReLU's, both sides


def layers(sizes: list[int]):
    """Linear maps through `sizes` with a ReLU between each two (none after the last)."""
    from torch import nn

    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        modules.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def build(hidden: list[int], latent_dim: int):
    from torch import nn

    return (
        lambda: nn.Sequential(layers([PIXELS, *hidden]), nn.ReLU()),
        lambda: layers([latent_dim, *reversed(hidden), PIXELS]),
    )


def initialise(model) -> None:
    """PyTorch's defaults, drawn as the layers are created."""
