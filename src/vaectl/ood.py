"""`vaectl ood`: does a score tell the test split from images unlike the training data, and
does the VAE's likelihood do it better than the AE's reconstruction error?

The normal set is the test split, binarised with eval.seed as every evaluation does. Novel
sets (at most ood.images each), binarised the same way:
- `other`: another MNIST-family dataset's official test set (ood.other; Fashion-MNIST for an
  MNIST model, MNIST for a Fashion-MNIST one: the published benchmark pair);
- `noise`: every pixel's intensity uniform in [0, 1] (as many images as the test split);
- `constant`: one grey level per image, uniform in [0, 1] (after binarisation, dots at that
  density; a level near 0 is a blank page, the classic input a likelihood loves);
- `inverted`: 1 - each test image's intensities;
- `flipped`: each test image upside down.

Scores (novelty.py): the VAE's -ELBO, IW-NLL (k = ood.iw_samples) and the IW-NLL corrected
for input complexity, and the AE's reconstruction NLL. Per novel set: AUROC, AUPRC and FPR
at 95% TPR of each score, with 95% bootstrap intervals, and each VAE score against the AE's
(paired: the same images) with its verdict. Writes reports/ood.json and reports/ood/ (score
histograms and ROC curves), and logs an MLflow run with both.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from vaectl import custody, novelty, scoring, shards
from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.data.download import official_splits
from vaectl.data.tensors import binarize, to_unit
from vaectl.files import (
    atomic_path,
    check_destination,
    folder_sha256,
    sha256_file,
    shared_dir,
    temporary_dir,
    write_json,
)
from vaectl.objectives import elbo_draw_shapes, iw_draw_shapes
from vaectl.params import EvalParams, OodParams
from vaectl.report import LEVEL, RESAMPLES

SHIFTS = ("noise", "constant", "inverted", "flipped")
CATALOGUE = ("mnist", "fashion-mnist", "kmnist", *SHIFTS)  # every novel set there can be
VAE_SCORES = ("neg_elbo", "iw_nll", "complexity_corrected")
AE_SCORE = "reconstruction"
SCORE_NAMES = tuple(f"vae.{s}" for s in VAE_SCORES) + (f"ae.{AE_SCORE}",)
NORMAL = "test split"  # the normal set's name in the report and the figures


def shifted(pixels: torch.Tensor, shift: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """A novel set in [0, 1] (before binarisation) as large as the test split (`pixels`,
    N x 784), at most `count` images: made from those images, or drawn beside them."""
    base = pixels[:count]
    if shift == "noise":
        return torch.rand(len(base), 784, generator=generator)
    if shift == "constant":
        return torch.rand(len(base), 1, generator=generator).expand(len(base), 784).clone()
    if shift == "inverted":
        return 1 - base
    if shift == "flipped":
        return base.reshape(-1, 28, 28).flip(1).reshape(-1, 784)
    raise ValueError(f"unknown shift {shift!r}")


def other_test_set(dataset: str, mirrors: list[str]) -> np.ndarray:
    """The official test images of `dataset`, fetched and checked as `vaectl fetch` does."""
    with temporary_dir("vaectl-ood-") as workdir:
        parts, _ = official_splits(dataset, ("test",), mirrors, Path(workdir))
    return parts["test"][0]


def score_sets(
    models: dict, sets: dict[str, torch.Tensor], params: OodParams, batch: int, seed: int, workers: int
) -> dict[str, dict[str, np.ndarray]]:
    """Every score of every image of each set (binary), batched, the batches of all sets shared
    out over `workers` processes. Each set's scores draw from the same seeded generators, one a
    score, so that adding a score or a set changes no other; a batch starts from the states the
    sequential pass reaches there (shards.py), so the bytes do not depend on `workers`."""
    vae = models["vae"]
    draws = functools.partial(
        batch_draws,
        vae.latent_dim,
        vae.prior_components() is not None,
        params.elbo_samples,
        params.iw_samples,
    )
    items = []
    for name, x in sets.items():
        generators = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
        sizes = [len(x[start : start + batch]) for start in range(0, len(x), batch)]
        states = shards.states_at_batches(generators, draws, sizes, torch.float32)
        items += [(name, start, state) for start, state in zip(range(0, len(x), batch), states, strict=True)]
    inputs = {"models": models, "sets": sets, "params": params, "batch": batch}
    values = shards.map_items(score_batch, inputs, items, workers)
    return {
        name: {
            score: np.concatenate(
                [v[score] for (set_name, _, _), v in zip(items, values, strict=True) if set_name == name]
            )
            for score in SCORE_NAMES
        }
        for name in sets
    }


def batch_draws(latent: int, prior_mixture: bool, elbo_samples: int, iw_samples: int, size: int) -> list:
    """The shapes of the draws `score_batch` makes for a batch of `size`: the -ELBO's generator's,
    then the IW-NLL's."""
    return [
        elbo_draw_shapes(elbo_samples, size, latent, prior_mixture),
        iw_draw_shapes(iw_samples, novelty.IW_CHUNK, size, latent),
    ]


@torch.no_grad()
def score_batch(inputs: dict, item: tuple) -> dict[str, np.ndarray]:
    """Every score (float64) of one batch; `item`: (its set, its first image, the states of the
    -ELBO's and the IW-NLL's generators at its start)."""
    name, start, states = item
    vae, ae, params = inputs["models"]["vae"], inputs["models"]["ae"], inputs["params"]
    elbo_gen, iw_gen = torch.Generator(), torch.Generator()
    elbo_gen.set_state(states[0])
    iw_gen.set_state(states[1])
    xb = inputs["sets"][name][start : start + inputs["batch"]]
    iw = novelty.iw_nll(vae, xb, params.iw_samples, iw_gen).numpy()
    scores = {
        "vae.neg_elbo": novelty.neg_elbo(vae, xb, params.elbo_samples, elbo_gen).numpy(),
        "vae.iw_nll": iw,
        "vae.complexity_corrected": scoring.complexity_corrected(iw, xb.numpy()),
        "ae.reconstruction": novelty.reconstruction(ae, xb).numpy(),
    }
    return {score: values.astype(np.float64) for score, values in scores.items()}


def set_seed(seed: int, name: str) -> int:
    """Each novel set's own seed (its shift, its binarisation, its bootstrap), so that a set's
    numbers do not depend on which other sets the params name."""
    return int(np.random.SeedSequence([seed, CATALOGUE.index(name)]).generate_state(1)[0])


def novel_sets(
    pixels: torch.Tensor, params: OodParams, mirrors: list[str], seed: int
) -> dict[str, torch.Tensor]:
    """Each novel set, binarised: the other dataset's test images (ood.other), then the
    shifts, each at most ood.images."""
    sets: dict[str, torch.Tensor] = {}
    names = ([params.other] if params.other != "none" else []) + list(params.shifts)
    for name in names:
        generator = torch.Generator().manual_seed(set_seed(seed, name))
        if name in SHIFTS:
            images = shifted(pixels, name, params.images, generator)
        else:
            images = to_unit(other_test_set(name, mirrors)[: params.images], torch.device("cpu"))
        sets[name] = binarize(images, generator)
    return sets


def run(
    params: OodParams,
    evaluation: EvalParams,
    mirrors: list[str],
    prepared: Path,
    vae_dir: Path,
    ae_dir: Path,
    report_path: Path,
    figures_dir: Path,
    experiment: str,
    workers: int = 1,
) -> dict:
    """Score the test split and each novel set, write the report and figures, log the run;
    the scoring on `workers` processes (the same bytes for any count)."""
    from vaectl import figures

    check_destination(report_path, folder=False)  # refused before any work
    check_destination(figures_dir, folder=True)
    data_sha = manifest_sha256(prepared)
    with shared_dir(vae_dir, "`vaectl train`"), shared_dir(ae_dir, "`vaectl train`"):
        models = {
            "vae": load_trained(vae_dir, "vae", data_sha, experiment)[0],
            "ae": load_trained(ae_dir, "ae", data_sha, experiment)[0],
        }
    pixels = to_unit(load_split(prepared, "test")[0], torch.device("cpu"))
    x = binarize(pixels, torch.Generator().manual_seed(evaluation.seed))  # evaluate's test x
    novel = novel_sets(pixels, params, mirrors, evaluation.seed)
    sets = {NORMAL: x, **novel}
    decodes = sum(map(len, sets.values())) * (params.elbo_samples + params.iw_samples)
    all_scores = score_sets(
        models, sets, params, evaluation.batch_size, evaluation.seed, shards.useful_workers(workers, decodes)
    )
    normal = all_scores[NORMAL]
    report: dict = {
        "normal": {"set": NORMAL, "images": len(pixels)},
        "scores": {name: "nats per image; higher = more novel" for name in SCORE_NAMES},
        "sets": {},
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": evaluation.seed},
        "equivalence_margin": novelty.MARGIN.size,
    }
    pairs = [(f"vae.{s}", f"ae.{AE_SCORE}") for s in VAE_SCORES]
    for name, x in novel.items():
        scores = all_scores[name]
        rng = np.random.default_rng(set_seed(evaluation.seed, name))
        report["sets"][name] = {
            "images": len(x),
            "mean_bits_per_dim": {s: float(novelty.bits_per_dim(v.mean())) for s, v in scores.items()},
            **novelty.detection(normal, scores, pairs, RESAMPLES, rng),
        }
    report["normal"]["mean_bits_per_dim"] = {
        s: float(novelty.bits_per_dim(v.mean())) for s, v in normal.items()
    }
    with atomic_path(report_path) as staged_report, atomic_path(figures_dir) as staged_figures:
        write_json(staged_report, report)  # the report and its figures replaced together
        written = figures.ood_figures(staged_figures, all_scores)
        record = {
            **custody.scored_names(vae_dir.name, ae_dir.name),
            custody.OOD_REPORT.tag: sha256_file(staged_report),
            custody.OOD_FIGURES.tag: folder_sha256(staged_figures),
        }
        log_ood(report, record, params, written, experiment, data_sha)
    return report


def log_ood(
    report: dict, record: dict, params: OodParams, figure_paths: list[Path], experiment: str, data_sha: str
) -> None:
    """The MLflow run `ood`: params, every detection metric, the figures, the names of the
    models it scored and the sha256 of its report and figures (`record`), which `vaectl
    report` checks before showing them."""
    from vaectl import tracking

    tags = {**tracking.standard_tags("ood", data_sha), **record}
    with tracking.start_run(experiment, "ood", tags) as run:
        run.log_params({f"ood.{k}": v for k, v in vars(params).items()})
        for name, found in report["sets"].items():
            key = name.replace(" ", "_")
            run.log_metrics(
                {
                    f"{key}.{score}.{m}": v["value"]
                    for score, ms in found["scores"].items()
                    for m, v in ms.items()
                }
            )
        for path in figure_paths:
            run.log_artifact(path, "figures")
