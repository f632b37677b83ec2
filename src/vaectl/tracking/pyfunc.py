"""The deployable model: an MLflow pyfunc over the torch.export programs that `vaectl export`
writes, with an explicit signature. Loaded by `mlflow.pyfunc.load_model` in any process."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from vaectl import scoring
from vaectl.params import PREDICT_MODES

# The vaectl files a registered version needs to load (this module and what it imports),
# bundled with it as code: the deployment depends on nothing else of the package.
BUNDLED_FILES = (
    "__init__.py",
    "archs/__init__.py",
    "archs/conv.py",
    "archs/gated_mlp.py",
    "archs/layers.py",
    "archs/mlp.py",
    "environment.py",
    "files.py",
    "numerics.py",
    "params.py",
    "scoring.py",
    "tracking/__init__.py",
    "tracking/pyfunc.py",
)
PREDICT_DEFAULTS = {"mode": "reconstruct", "n": 16, "seed": 0}
MAX_SAMPLES_ENV, MAX_SAMPLES_DEFAULT = "VAECTL_SERVE_MAX_SAMPLES", 1000  # bound on `n` (sample mode)
ARTIFACTS = {  # pyfunc artifact key -> file written by `vaectl export`
    "encoder": "encoder.pt2",
    "decoder": "decoder.pt2",
    "reconstruct": "reconstruct.pt2",
    "score": "score.pt2",
    "score_calibration": "score.json",
    "encoder_onnx": "encoder.onnx",
    "decoder_onnx": "decoder.onnx",
    "reconstruct_onnx": "reconstruct.onnx",
    "prior": "prior.npz",
    "model_card": "model_card.json",
    "model_card_md": "model_card.md",
    "checksums": "checksums.json",
}


# This module is imported only inside commands, never by `vaectl --help`. mlflow warns about
# missing predict type hints for its own loaders and for our class (whose signature is
# explicit), past any warning filter set from outside; keep that notice off the terminal.
with contextlib.redirect_stderr(io.StringIO()):
    import mlflow.pyfunc

    class AutoEncoderPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        """MLflow pyfunc over the exported torch.export programs. Input: N x 784 or N x 28 x 28
        pixels in [0, 1] (any float dtype; the signature leaves the input's rank open, and
        predict checks it); `params={"mode": ...}` picks reconstruct (default), encode, decode
        (N x latent_dim latents), sample (`n`, `seed`) or score (N x 2: the novelty score in
        nats and the out-of-distribution flag, 1.0 above the calibrated threshold)."""

        def load_context(self, context):
            import json

            import torch

            art = context.artifacts
            self.parts = {
                part: torch.export.load(art[part]).module()
                for part in ("encoder", "decoder", "reconstruct", "score")
            }
            prior = np.load(art["prior"])  # K equally weighted Gaussians (vaectl.prior)
            self.means, self.chols = prior["means"], prior["chols"]
            self.latent_dim = self.means.shape[1]
            with open(art["score_calibration"]) as handle:
                self.calibration = json.load(handle)
            self.variational = bool(self.calibration["importance_samples"])

        def _bad(self, message: str):
            from mlflow.exceptions import MlflowException

            return MlflowException.invalid_parameter_value(message)

        def predict(self, context, model_input, params=None):
            import torch

            params = {**PREDICT_DEFAULTS, **(params or {})}
            mode = params["mode"]
            if mode not in PREDICT_MODES:
                raise self._bad(f"unknown mode {mode!r}: use {', '.join(PREDICT_MODES)}")
            if mode == "sample":
                return self._sample(int(params["n"]), int(params["seed"]))
            x = self._checked(mode, np.asarray(model_input))
            if mode == "score":
                return self._score(x)
            part = self.parts[{"encode": "encoder", "decode": "decoder"}.get(mode, mode)]
            with torch.no_grad():  # the model call itself: no autograd graph is built
                out = part(torch.from_numpy(x.astype(np.float32)))
            return (torch.cat(out, dim=1) if isinstance(out, tuple) else out).numpy()

        def _sample(self, n: int, seed: int) -> np.ndarray:
            import torch

            most = int(os.environ.get(MAX_SAMPLES_ENV, MAX_SAMPLES_DEFAULT))
            if not 1 <= n <= most:
                raise self._bad(f"n must be between 1 and {most} ({MAX_SAMPLES_ENV}), got {n}")
            if seed < 0:
                raise self._bad(f"seed must be >= 0, got {seed}")
            # prior.sample_latents in numpy (not a copy to share): a bundle ships no model code
            rng = np.random.default_rng(seed)
            eps = rng.standard_normal((n, self.latent_dim))
            if len(self.means) == 1:  # no component index drawn: the same samples as ever
                z = self.means[0] + eps @ self.chols[0].T
            else:
                pick = rng.integers(len(self.means), size=n)
                z = self.means[pick] + np.einsum("nij,nj->ni", self.chols[pick], eps)
            with torch.no_grad():
                return self.parts["decoder"](torch.from_numpy(z.astype(np.float32))).detach().numpy()

        def _score(self, x: np.ndarray) -> np.ndarray:
            """N x 2 float32: each image's score and whether it exceeds the threshold."""
            found = scoring.scores(self.parts["score"], self.latent_dim if self.variational else None, x)
            flag = found > self.calibration["threshold"]
            return np.stack([found, flag], axis=1).astype(np.float32)

        def _checked(self, mode: str, x: np.ndarray) -> np.ndarray:
            """The input as the model part takes it, or the one-line reason it cannot be."""
            if x.dtype.kind in "biu":  # JSON has no float/int distinction: 0/1 images are ints
                x = x.astype(np.float32)
            if x.dtype.kind != "f":
                raise self._bad(f"expected numbers (pixels in [0, 1] or latents), got {x.dtype}")
            if mode != "decode" and x.ndim == 3 and x.shape[1:] == (28, 28):
                x = x.reshape(len(x), 784)
            if np.isnan(x).any() or np.isinf(x).any():
                raise self._bad("input contains NaN or infinite values")
            width = self.latent_dim if mode == "decode" else 784
            if x.ndim != 2 or x.shape[1] != width or len(x) == 0:
                raise self._bad(f"mode {mode} expects N x {width} input with N >= 1, got shape {x.shape}")
            if mode != "decode" and (x.min(initial=0) < 0 or x.max(initial=0) > 1):
                raise self._bad("pixel values must lie in [0, 1]")
            return x


def signature():
    """The predict params and a 2-D float32 output (pixels or latents). No input schema:
    MLflow would fix its rank and reject N x 28 x 28 images before predict, which checks
    shape, dtype and range itself."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        params=ParamSchema(
            [
                ParamSpec("mode", "string", "reconstruct"),
                ParamSpec("n", "long", 16),
                ParamSpec("seed", "long", 0),
            ]
        ),
    )
