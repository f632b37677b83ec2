"""vaectl: a tracked, reproducible VAE vs AE pipeline on MNIST-family images."""

__version__ = "0.2.0"


class UserError(Exception):
    """A mistake the user can fix (bad input, missing file, bad param).

    The CLI prints it as one line and exits non-zero, without a traceback.
    """
