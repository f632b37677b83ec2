"""`vaectl holes`: the 2-D latent experiment. A VAE and an AE with two latent dimensions
(the same skeleton and training otherwise) let us look at the whole latent space at once:
where the test images land, and what every region decodes to. A hole is a latent whose
decoded image the realism judge cannot recognise (max-probability below
`eval.hole_threshold`); the metrics are shares of holes among

- `grid`: a hole_grid x hole_grid grid over the model's own latent distribution (VAE: its
  prior N(0, I); AE: the Gaussian fitted to its codes), at the Gaussian's quantiles, so each
  grid point stands for an equal share of that distribution's mass;
- `samples`: draws from that same distribution;
- `standard_normal`: draws from N(0, I), for both models (for the AE, a region its codes
  need not fill).

Each share has a 95% bootstrap interval, and the VAE-vs-AE comparison a verdict (unpaired:
each model has its own latents). Writes reports/holes.json (a DVC metric) and two figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vaectl import UserError, custody
from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.data.tensors import to_unit
from vaectl.files import atomic_path, check_destination, folder_sha256, sha256_file, shared_dir, write_json
from vaectl.judge import judge_images, load_classifier
from vaectl.params import EvalParams
from vaectl.prior import latent_prior, moment_matched, sample_latents
from vaectl.report import LEVEL, RESAMPLES, compare_units

SOURCES = ("grid", "samples", "standard_normal")


def quantile_grid(size: int) -> torch.Tensor:
    """size x size standard-normal points at the quantiles (k + 1/2) / size of each axis,
    row-major from the top left (high second coordinate) as in the decoded picture."""
    q = torch.special.ndtri((torch.arange(size, dtype=torch.float64) + 0.5) / size).float()
    second, first = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([first.reshape(-1), second.reshape(-1)], 1)


@torch.no_grad()
def run(
    params: EvalParams,
    prepared: Path,
    vae_dir: Path,
    ae_dir: Path,
    classifier_path: Path,
    report_path: Path,
    figures_dir: Path,
    experiment: str,
) -> dict:
    from vaectl import figures

    check_destination(report_path, folder=False)  # refused before any work
    check_destination(figures_dir, folder=True)
    data_sha = manifest_sha256(prepared)
    test_images, test_labels = load_split(prepared, "test")
    train_x = to_unit(load_split(prepared, "train")[0], torch.device("cpu"))
    x = to_unit(test_images, torch.device("cpu"))
    with shared_dir(vae_dir, "`vaectl train`"), shared_dir(ae_dir, "`vaectl train`"):
        models = {
            "vae": load_trained(vae_dir, "vae", data_sha, experiment)[0],
            "ae": load_trained(ae_dir, "ae", data_sha, experiment)[0],
        }
    for name, model in models.items():
        if model.latent_dim != 2:
            raise UserError(
                f"the 2-D experiment needs latent_dim 2; the {name} in "
                f"{vae_dir if name == 'vae' else ae_dir} has {model.latent_dim} "
                f"(train one with `vaectl train --model {name}-2d --latent-dim 2`)"
            )
    classifier, _ = load_classifier(classifier_path, experiment)
    generator = torch.Generator().manual_seed(params.seed)
    units, pictures = {}, {}
    for name, model in models.items():
        means, chols = latent_prior(model, train_x)
        mean, chol = moment_matched(means, chols)
        grid_images = model.mean_image(mean + quantile_grid(params.hole_grid) @ chol.T)
        own = model.mean_image(sample_latents(means, chols, params.generated, generator))
        standard = model.mean_image(torch.randn(params.generated, 2, generator=generator))
        units[name] = {
            f"{source}.unrecognised": judge_images(classifier, images, params.hole_threshold)["unrecognised"]
            for source, images in zip(SOURCES, (grid_images, own, standard), strict=True)
        }
        pictures[name] = {
            "latents": model.encode(x)[0].numpy(),
            "mean": mean.numpy(),
            "chol": chol.numpy(),
            "grid": grid_images.numpy(),
        }
    rng = np.random.default_rng(params.seed)
    comparison = {m: compare_units(m, units["vae"][m], units["ae"][m], False, rng) for m in units["vae"]}
    report = {
        "latent_dim": 2,
        "grid": params.hole_grid,
        "hole_threshold": params.hole_threshold,
        "vae": {m: float(v.mean()) for m, v in units["vae"].items()},
        "ae": {m: float(v.mean()) for m, v in units["ae"].items()},
        "real_images": {
            "unrecognised": float(judge_images(classifier, x, params.hole_threshold)["unrecognised"].mean())
        },
        "comparison": comparison,
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": params.seed},
    }
    with atomic_path(report_path) as staged_report, atomic_path(figures_dir) as staged_figures:
        write_json(staged_report, report)  # the report and its figures replaced together
        written = figures.latent_2d_figures(staged_figures, pictures, test_labels, params.hole_grid)
        record = {
            **custody.scored_names(vae_dir.name, ae_dir.name),
            custody.HOLES_REPORT.tag: sha256_file(staged_report),
            custody.HOLES_FIGURES.tag: folder_sha256(staged_figures),
        }
        log_holes(report, written, experiment, data_sha, record)
    return report


def log_holes(report: dict, figure_paths: list[Path], experiment: str, data_sha: str, record: dict) -> None:
    """The MLflow run `holes-2d`, with the names of the models it scored and the sha256 of the
    report and figures (`record`), which `vaectl report` checks before showing them."""
    from vaectl import tracking

    tags = {**tracking.standard_tags("holes", data_sha), **record}
    with tracking.start_run(experiment, "holes-2d", tags) as run:
        run.log_metrics({f"{name}.{m}": v for name in ("vae", "ae") for m, v in report[name].items()})
        run.log_metrics({f"vae_minus_ae.{m}": c["difference"] for m, c in report["comparison"].items()})
        for path in figure_paths:
            run.log_artifact(path, "figures")
