"""`vaectl export`: deployable artifacts of each trained model.

Per model, in export/<kind>/: torch.export programs (.pt2) and ONNX, any batch size, of the
encoder, the decoder (latent -> pixel probabilities) and the full reconstruction; an ONNX Runtime vs
torch parity check; the latent prior used by `sample` (N(0, I) or the VampPrior's mixture for
the VAE, a Gaussian fitted to the training latents for the AE); a model card (markdown +
JSON); sha256 checksums.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vaectl import UserError, custody, scoring
from vaectl.archs import PIXELS
from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.data.tensors import to_unit
from vaectl.files import atomic_path, exclusive_dir, read_json, sha256_file, write_json
from vaectl.models import AutoEncoder
from vaectl.objectives import iw_nll_given_draws, reconstruction_nll
from vaectl.params import PREDICT_MODES
from vaectl.prior import latent_prior
from vaectl.report import comparison_rows, flatten_model_metrics

PARITY_TOLERANCE = 1e-4


class Encoder(nn.Module):
    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, x):
        mu, logvar = self.model.encode(x)
        return (mu, logvar) if logvar is not None else (mu,)


class Decoder(nn.Module):
    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.mean_image(z)


class Score(nn.Module):
    """The served score's model part (scoring.py) on binary x: the VAE's IW-NLL with its
    draws given, the AE's reconstruction NLL."""

    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, x, eps=None):
        if eps is None:
            return reconstruction_nll(self.model, x)
        return iw_nll_given_draws(self.model, x, eps)


class Reconstruct(nn.Module):
    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.reconstruct(x)


def save_program(module: nn.Module, examples: tuple[torch.Tensor, ...], dest: Path) -> None:
    """`dest` (.pt2): torch.export's ExportedProgram of `module`, any batch size (the first
    input's first dimension; any others are fixed), saved without
    what would make it differ between checkouts (each node's Python stack trace, with the
    absolute paths of this checkout and its venv) and without the example input (test
    images), so the export is the same bytes wherever it is built."""
    batch = torch.export.Dim("batch", min=1)
    shapes = ({0: batch},) + (None,) * (len(examples) - 1)
    program = torch.export.export(module, examples, dynamic_shapes=shapes)
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    program.example_inputs = None
    torch.export.save(program, dest)


def export_graphs(model: AutoEncoder, out: Path, probe: torch.Tensor) -> dict[str, float]:
    """Write <part>.pt2 (torch.export) and <part>.onnx for each part; return the max abs
    difference between ONNX Runtime and torch on `probe` per part."""
    import onnxruntime

    z_probe = model.encode(probe)[0].detach()
    encoder_outputs = ["mu", "logvar"] if model.variational else ["z"]
    parts = {
        "encoder": (Encoder(model), probe, ["x"], encoder_outputs),
        "decoder": (Decoder(model), z_probe, ["z"], ["probs"]),
        "reconstruct": (Reconstruct(model), probe, ["x"], ["probs"]),
    }
    parity = {}
    for name, (module, example, inputs, outputs) in parts.items():
        module.eval()
        save_program(module, (example,), out / f"{name}.pt2")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the ONNX exporter's deprecation notices
            torch.onnx.export(
                module,
                (example,),
                str(out / f"{name}.onnx"),
                input_names=inputs,
                output_names=outputs,
                dynamo=False,
                dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
            )
            expected = module(example)
        session = onnxruntime.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {inputs[0]: example.numpy()})
        expected = expected if isinstance(expected, tuple) else (expected,)
        parity[name] = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
    return parity


def model_card(
    kind: str, summary: dict, metrics: dict, manifest_sha: str, checkpoint_sha: str, score: dict
) -> tuple[dict, str]:
    """(card JSON, card markdown): only what the inputs determine (no run ids, commits or
    dates, so the export is byte-identical wherever it is rebuilt); MLflow holds the rest.
    ONNX Runtime's parity is the tolerance it passed: its exact difference from torch depends
    on the kernels ONNX Runtime picks for the CPU, so `vaectl export` prints it instead."""
    rows = comparison_rows(metrics)
    card = {
        "model": kind,
        "architecture": summary["model_config"],
        "binarize": summary["binarize"],
        "checkpoint_sha256": checkpoint_sha,
        "best_val_loss": summary["best_val_loss"],
        "data_manifest_sha256": manifest_sha,
        "test_metrics": flatten_model_metrics(metrics[kind]),
        "protocol": metrics["protocol"],
        "onnx_parity_max_abs_diff_below": PARITY_TOLERANCE,
        "inputs": "float N x 784 or N x 28 x 28 pixels in [0, 1] (decode: N x latent_dim latents)",
        "modes": list(PREDICT_MODES),
        "score": score,
    }
    table = "\n".join(f"| {' | '.join(row)} |" for row in rows)
    arch = summary["model_config"]
    text = f"""# {kind.upper()} model card

- Architecture: {arch["arch"]}, hidden {arch["hidden"]}, latent {arch["latent_dim"]}
- Training: best validation loss {summary["best_val_loss"]:.2f} nats/image, binarisation
  `{summary["binarize"]}`; checkpoint sha256 `{checkpoint_sha}` (the MLflow training run carries
  it as tag `vaectl.checkpoint_sha256`; the registered version, the run id and git commit)
- Data manifest sha256: `{manifest_sha}`
- ONNX Runtime vs torch: max abs difference below {PARITY_TOLERANCE:g} on 64 test images

## Test metrics, VAE vs AE ({metrics["protocol"]}; 95% bootstrap intervals)

| metric | VAE | AE | VAE/AE | verdict |
| --- | --- | --- | --- | --- |
{table}

## Use

`mlflow.pyfunc.load_model(uri).predict(x, params={{"mode": "reconstruct"}})` with x a float
N x 784 or N x 28 x 28 array in [0, 1]; modes: reconstruct, encode (mean and log-variance for the VAE),
decode (x = N x latent_dim latents), sample (params n, seed), score (N x 2: each image's
score and its out-of-distribution flag, 1.0 or 0.0).

## Out-of-distribution score

`score` mode gives each image's {score["score"]} ({score["units"]}) and flags it out of
distribution when the score exceeds **{score["threshold"]:.4f}**, the {score["quantile"]:g}
quantile of the scores of the {score["calibration"]} (so about
{100 * (1 - score["quantile"]):g}% of in-distribution images are flagged). Its draws are fixed
(seed {score["seed"]}; importance samples: {score["importance_samples"]}): an image's score does
not depend on the batch it comes in.
"""
    return card, text


class Images(NamedTuple):
    train: torch.Tensor  # N x 784 in [0, 1]: the AE's latent Gaussian is fitted to its codes
    probe: torch.Tensor  # 64 test images: the ONNX parity check
    validation: np.ndarray  # N x 784 float32 in [0, 1]: the served score's threshold


def calibrate_score(model: AutoEncoder, validation: np.ndarray, out: Path) -> dict:
    """Export the served score's program (score.pt2) and write score.json: its threshold, the
    QUANTILE of the validation split's scores, computed through the saved program itself and
    scoring.scores, exactly as the registered pyfunc computes them."""
    eps = torch.zeros(scoring.SAMPLES, model.latent_dim)
    example = (torch.zeros(2, PIXELS), eps) if model.variational else (torch.zeros(2, PIXELS),)
    save_program(Score(model).eval(), example, out / "score.pt2")
    program = torch.export.load(out / "score.pt2").module()
    found = scoring.scores(program, model.latent_dim if model.variational else None, validation)
    calibration = scoring.calibrated(found, model.variational, len(validation))
    write_json(out / "score.json", calibration)
    return calibration


def scored_metrics(metrics_path: Path, trained: dict, experiment: str) -> tuple[dict, str]:
    """(metrics.json, its evaluate run id): the report of an evaluate run that scored exactly
    these checkpoints, as that run recorded it."""
    scored = {
        custody.SCORED[kind]: tags[custody.CHECKPOINT.tag] for kind, (_, _, (_, tags)) in trained.items()
    }
    run_id, _ = custody.recorded_run(
        metrics_path, custody.METRICS, experiment, "evaluate", scored, " of the checkpoints in models/"
    )
    return read_json(metrics_path, "vaectl evaluate", ("protocol", "vae", "ae", "comparison")), run_id


def run(
    kinds: tuple[str, ...],
    prepared: Path,
    models_root: Path,
    metrics_path: Path,
    out_root: Path,
    experiment: str,
) -> dict[str, dict[str, float]]:
    """Export each of `kinds` into out_root/<kind> (replaced whole) and record, in an MLflow
    run of kind export-<kind>, the digest of its checksums.json and the evaluate run its card
    quotes. Returns ONNX Runtime's max abs difference from torch per part."""
    from vaectl import tracking

    manifest_sha = manifest_sha256(prepared)
    trained = {
        kind: load_trained(models_root / kind, kind, manifest_sha, experiment) for kind in ("vae", "ae")
    }
    metrics, evaluate_run = scored_metrics(metrics_path, trained, experiment)
    cpu = torch.device("cpu")
    images = Images(
        train=to_unit(load_split(prepared, "train")[0], cpu),
        probe=to_unit(load_split(prepared, "test")[0][:64], cpu),
        validation=load_split(prepared, "val")[0].reshape(-1, PIXELS) / np.float32(255),
    )
    parities = {}
    with exclusive_dir(out_root, "`vaectl export`"):
        for kind in kinds:
            model, summary, (training_run, training_tags) = trained[kind]
            checkpoint_sha = training_tags[custody.CHECKPOINT.tag]
            with atomic_path(out_root / kind) as out:
                out.mkdir()
                parities[kind] = export_model(
                    kind, model, summary, metrics, manifest_sha, checkpoint_sha, images, out
                )
            tags = {
                **tracking.standard_tags(f"export-{kind}", manifest_sha),
                custody.CHECKSUMS.tag: sha256_file(out_root / kind / "checksums.json"),
                custody.EXPORTED_CHECKPOINT: checkpoint_sha,
                custody.EVALUATE_RUN: evaluate_run,
                "vaectl.training_run_id": training_run,
            }
            with tracking.start_run(experiment, f"export-{kind}", tags) as mlrun:
                mlrun.log_metrics({f"onnx_parity.{part}": value for part, value in parities[kind].items()})
    return parities


def export_model(
    kind: str,
    model: AutoEncoder,
    summary: dict,
    metrics: dict,
    manifest_sha: str,
    checkpoint_sha: str,
    images: Images,
    out: Path,
) -> dict[str, float]:
    """Every file of one export into `out`, checksums.json last; returns the ONNX parities."""
    parity = export_graphs(model, out, images.probe)
    worst = max(parity.values())
    if worst >= PARITY_TOLERANCE:
        raise UserError(
            f"{kind}: ONNX Runtime differs from torch by {worst:.2e} (>= {PARITY_TOLERANCE}); export aborted"
        )
    means, chols = latent_prior(model, images.train)
    np.savez(out / "prior.npz", means=means.numpy(), chols=chols.numpy())
    score = calibrate_score(model, images.validation, out)
    card, text = model_card(kind, summary, metrics, manifest_sha, checkpoint_sha, score)
    write_json(out / "model_card.json", card)
    (out / "model_card.md").write_text(text)
    write_json(out / "checksums.json", {p.name: sha256_file(p) for p in sorted(out.iterdir())})
    return parity
