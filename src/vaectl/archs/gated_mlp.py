"""`gated-mlp`, the published VAE baseline's skeleton (Tomczak & Welling's VampPrior code,
reused by Exemplar VAE): gated layers h(x) * sigmoid(g(x)) instead of a fixed nonlinearity,
a linear map to the logits, every linear map He-initialised."""

from __future__ import annotations

from vaectl.archs import PIXELS, dense_count


def check(hidden: list[int]) -> str | None:
    return None


def features(hidden: list[int]) -> int:
    return hidden[-1]


def parameter_count(hidden: list[int], latent_dim: int) -> int:
    return (
        dense_count([PIXELS, *hidden], gate=2)
        + dense_count([latent_dim, *reversed(hidden)], gate=2)
        + dense_count([hidden[0], PIXELS])
    )


def activation_floats(hidden: list[int], latent_dim: int) -> int:
    return 2 * PIXELS + 3 * 2 * sum(hidden)  # a gated layer's h, g and product, both sides


def build(hidden: list[int], latent_dim: int):
    from torch import nn

    from vaectl.archs.layers import GatedDense

    def gated(sizes: list[int]) -> list[nn.Module]:
        return [GatedDense(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]

    return (
        lambda: nn.Sequential(*gated([PIXELS, *hidden])),
        lambda: nn.Sequential(*gated([latent_dim, *reversed(hidden)]), nn.Linear(hidden[0], PIXELS)),
    )


def initialise(model) -> None:
    """He initialisation of every linear map, the latent head's included, as the published code."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, (2.0 / module.in_features) ** 0.5)
