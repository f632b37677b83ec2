"""vaectl: a tracked, reproducible VAE vs AE pipeline on MNIST-family images."""

from importlib import metadata

try:  # the version is pyproject.toml's, as the installed package records it
    __version__ = metadata.version("vaectl")
except metadata.PackageNotFoundError:  # source on sys.path, never installed
    __version__ = "unknown (not installed)"


class UserError(Exception):
    """A mistake the user can fix (bad input, missing file, bad param).

    The CLI prints it as one line and exits non-zero, without a traceback.
    """
