"""`vaectl evaluate --baseline ae`: what the VAE's probabilistic latent space buys, in numbers.

On the test split, for the model (a VAE) and its baseline (an AE) trained on the same data:
likelihood (negative ELBO and its parts, importance-weighted NLL, bits/dim: VAE only),
reconstruction error, latent usage, interpolation smoothness on the same seeded test pairs,
and the realism of interpolation midpoints and of generated samples as judged by a small
classifier. Writes reports/summary.json (the headline: the DVC metric), reports/metrics.json
(every number with its interval), reports/latents.json and figures.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from vaectl import UserError, custody, metric_table, shards
from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256, split_label
from vaectl.data.tensors import binarize, to_unit
from vaectl.files import (
    atomic_path,
    check_destination,
    folder_sha256,
    read_json,
    sha256_file,
    shared_dir,
    write_json,
)
from vaectl.interpolation import decode_path, path_metrics, path_ppl
from vaectl.judge import judge_images, load_classifier, scores
from vaectl.layout import ModelFiles
from vaectl.models import AutoEncoder
from vaectl.objectives import (
    bernoulli_nll,
    elbo_draw_shapes,
    expected_bernoulli_nll,
    iw_draw_shapes,
    iwae_log_likelihood,
    kl_to_prior,
)
from vaectl.params import ELBO_SAMPLES, EvalParams, flatten
from vaectl.prior import generate
from vaectl.report import (
    LEVEL,
    RESAMPLES,
    VERDICT_WORDS,
    bootstrap_mean,
    compare_units,
    comparison_rows,
    flatten_model_metrics,
)

# Images each model generates for itself: independent draws, compared unpaired. `samples`:
# from the model's own latent prior (VAE: N(0, I); AE: a Gaussian fitted to its codes);
# `standard_normal`: z ~ N(0, I) for both, where an AE's latent space may have holes.
GENERATED = ("samples", "standard_normal")
LATENT_VALUES = ("mu", "kl_dims")  # per-image values `batch_values` returns that are not metrics


@torch.no_grad()
def test_inputs(test_images: np.ndarray, protocol: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x the likelihoods are of, pixels in [0, 1]): the test images binarised once with the
    eval seed, so every model and every rerun sees the same x, unless the protocol is 'none'."""
    pixels = to_unit(test_images, torch.device("cpu"))
    x = pixels if protocol == "none" else binarize(pixels, torch.Generator().manual_seed(seed))
    return x, pixels


def accelerated(model: AutoEncoder, generator: torch.Generator, seed: int):
    """(model, generator, device) for the IW-NLL, by far the largest computation: on the GPU
    when there is one (with its own seeded generator), else the CPU ones as given."""
    if not torch.cuda.is_available():
        return model, generator, torch.device("cpu")
    device = torch.device("cuda")
    return copy.deepcopy(model).to(device), torch.Generator(device=device).manual_seed(seed), device


class ImageProgress:
    """'IW-NLL 2000/10000 images, 48 s, about 3 min left' on stderr every tenth of the work:
    the IW-NLL of a full test set takes minutes."""

    def __init__(self, label: str, total: int, echo):
        self.label, self.total, self.echo = label, total, echo
        self.began, self.next_report = time.perf_counter(), 0.1

    def __call__(self, done: int) -> None:
        elapsed = time.perf_counter() - self.began
        if done / self.total < self.next_report or done == self.total or elapsed < 5:
            return  # quiet for quick passes (the AE's, small test sets)
        left = elapsed * (self.total - done) / done
        left_text = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
        self.echo(f"{self.label} {done}/{self.total} images, {elapsed:.0f} s, about {left_text} left")
        self.next_report = done / self.total + 0.1


@torch.no_grad()
def likelihood_metrics(
    model: AutoEncoder,
    x: torch.Tensor,
    x_pixels: torch.Tensor,
    params: EvalParams,
    generator: torch.Generator,
    progress=lambda done: None,
    workers: int = 1,
) -> tuple[dict, dict, dict]:
    """(metrics, latent statistics, per-image values) over the test set, batched; no
    per-image Python loop. The per-image values feed the bootstrap intervals. A VAE's batches
    are shared out over `workers` processes (CPU only), each starting from the generator state
    the sequential pass reaches there (shards.py): the same bytes for any count.
    `progress(images done)` is called after every batch."""
    sizes = [len(x[start : start + params.batch_size]) for start in range(0, len(x), params.batch_size)]
    inputs = {"model": model, "x": x, "x_pixels": x_pixels, "params": params}
    generators, iw_device = [], torch.device("cpu")
    if model.variational:
        iw_model, iw_generator, iw_device = accelerated(model, generator, params.seed)
        inputs.update(components=model.prior_components(), iw_model=iw_model, iw_device=iw_device)
        generators = [generator] if iw_generator is generator else [generator, iw_generator]
    draws = functools.partial(batch_draws, model, params, inputs.get("components"), len(generators))
    states = shards.states_at_batches(generators, draws, sizes, model.encode(x[:1])[0].dtype)
    items = list(zip(range(0, len(x), params.batch_size), states, strict=True))
    sharing = workers if model.variational and iw_device.type == "cpu" else 1
    values = shards.map_items(batch_values, inputs, items, sharing, lambda done: progress(sum(sizes[:done])))
    units = {
        name: torch.cat([v[name] for v in values]).numpy() for name in values[0] if name not in LATENT_VALUES
    }
    metrics = {name: float(v.mean()) for name, v in units.items()}
    mu_all = torch.cat([v["mu"] for v in values])
    variance = mu_all.var(0)
    latents: dict[str, object] = {"encoder_mean_variance": variance.tolist()}
    if model.variational:
        units["bits_per_dim"] = units["iw_nll"] / (784 * math.log(2))
        metrics["bits_per_dim"] = float(units["bits_per_dim"].mean())
        metrics["iw_k"] = params.iw_samples
        metrics["active_units"] = int((variance > 0.01).sum())
        if "kl_dims" in values[0]:
            latents["kl_per_dim"] = torch.cat([v["kl_dims"] for v in values]).mean(0).tolist()
        latents["active_units"] = metrics["active_units"]
    return metrics, latents, units


@torch.no_grad()
def batch_values(inputs: dict, item: tuple) -> dict[str, torch.Tensor]:
    """One test batch's per-image values (float64), its encoder means (`mu`) and, against
    N(0, I), its KL per latent dimension (`kl_dims`); `item`: (its first image, the state of
    each generator at its start)."""
    model, params = inputs["model"], inputs["params"]
    start, states = item
    generator, iw_generator = restored(states)
    xb = inputs["x"][start : start + params.batch_size]
    pb = inputs["x_pixels"][start : start + params.batch_size]
    mu, logvar = model.encode(xb)
    logits = model.decode(mu)
    values = {
        "recon_bce": bernoulli_nll(logits, xb),
        "recon_mse": (torch.sigmoid(logits) - pb).pow(2).mean(-1),
    }
    if logvar is not None:  # the VAE
        recon = expected_bernoulli_nll(model, xb, ELBO_SAMPLES, generator)
        kl = kl_to_prior(inputs["components"], mu, logvar, ELBO_SAMPLES, generator)
        iw_model, device = inputs["iw_model"], inputs["iw_device"]
        iw_dtype = {"bfloat16": torch.bfloat16, "float32": None}[params.iw_precision]
        iw_nll = -iwae_log_likelihood(
            iw_model, xb.to(device), params.iw_samples, params.iw_chunk, iw_generator, iw_dtype
        ).cpu()
        values.update({"elbo_recon": recon, "elbo_kl": kl, "neg_elbo": recon + kl, "iw_nll": iw_nll})
    values = {name: v.double() for name, v in values.items()}
    values["mu"] = mu
    if logvar is not None and inputs["components"] is None:  # the KL splits over dims only against N(0, I)
        values["kl_dims"] = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    return values


def batch_draws(model, params: EvalParams, components, generators: int, size: int) -> list[list[tuple]]:
    """The shapes of the standard-normal draws `batch_values` makes for a batch of `size`, per
    generator, in order: the ELBO's, then the IW-NLL's (on the same generator, or on the GPU's)."""
    if not generators:
        return []
    elbo = elbo_draw_shapes(ELBO_SAMPLES, size, model.latent_dim, components is not None)
    iw = iw_draw_shapes(params.iw_samples, params.iw_chunk, size, model.latent_dim)
    return [elbo + iw] if generators == 1 else [elbo, iw]


def restored(states: list) -> tuple:
    """(the ELBO's generator, the IW-NLL's) at a batch's start: one CPU generator for both, or
    a CPU one and the GPU's."""
    if not states:
        return None, None
    generators = []
    for state, device in zip(states, ("cpu", "cuda"), strict=False):
        generators.append(torch.Generator(device=device))
        generators[-1].set_state(state)
    return generators[0], generators[-1]


def pick_pairs(labels: np.ndarray, n: int, same_class: bool, rng: np.random.Generator) -> np.ndarray:
    """n index pairs (i, j), i != j, with equal (same_class) or different labels."""
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        i, j = rng.choice(len(labels), 2, replace=False)
        if (labels[i] == labels[j]) == same_class:
            pairs.append((i, j))
    return np.array(pairs)


@torch.no_grad()
def interpolation_metrics(
    model: AutoEncoder, x: torch.Tensor, pairs: np.ndarray, params: EvalParams, classifier
) -> tuple[dict, dict, torch.Tensor]:
    """(means, per-pair values, decoded paths) of the smoothness metrics and the judge's
    scores of the midpoints, on paths between the encoder means of the pairs' images."""
    mu = model.encode(x)[0]
    z0, z1 = mu[pairs[:, 0]], mu[pairs[:, 1]]
    decode = model.mean_image
    paths = decode_path(decode, z0, z1, params.interp_steps, params.interp_mode)
    per_pair = path_metrics(paths)
    per_pair.update(path_ppl(decode, z0, z1, params.ppl_epsilon, params.ppl_samples, params.interp_mode))
    midpoints = decode_path(decode, z0, z1, 2, params.interp_mode)[:, 1]
    per_pair.update({f"midpoint_{k}": v for k, v in scores(classifier, midpoints).items()})
    units = {name: values.double().numpy() for name, values in per_pair.items()}
    return {name: float(values.mean()) for name, values in units.items()}, units, paths


def compare_models(units: dict[str, dict[str, np.ndarray]], seed: int) -> tuple[dict, dict]:
    """(comparison of every metric both models have, intervals of the VAE's own metrics):
    paired bootstrap over the same test images and pairs; generated samples, drawn
    independently per model, are resampled independently."""
    rng = np.random.default_rng(seed)
    vae, ae = units["vae"], units["ae"]
    comparison = {
        name: compare_units(name, vae[name], ae[name], name.split(".")[0] not in GENERATED, rng)
        for name in vae
        if name in ae
    }
    own = {name: bootstrap_mean(values, rng) for name, values in vae.items() if name not in ae}
    return comparison, own


REPORT_FILES = ("summary.json", "metrics.json", "latents.json")


def run(
    params: EvalParams,
    prepared: Path,
    vae: ModelFiles,
    ae: ModelFiles,
    classifier_path: Path,
    reports: Path,
    figures_dir: Path,
    tracking_experiment: str,
    echo=print,
    workers: int = 1,
) -> tuple[dict, str]:
    """Evaluate, write the reports, and log it all in one MLflow run that spans the work.
    Every input is checked against its writer's record first; the reports and figures are
    replaced together at the end, or not at all. The likelihoods run on `workers` processes
    (the same bytes for any count). Returns (metrics.json's report, the run id)."""
    from vaectl import tracking

    for name in REPORT_FILES:  # refused before any work
        check_destination(reports / name, folder=False)
    check_destination(figures_dir, folder=True)
    data_sha = manifest_sha256(prepared)
    test_images, test_labels = load_split(prepared, "test")
    train_images, _ = load_split(prepared, "train")
    loaded, curves = load_both({"vae": vae, "ae": ae}, data_sha, tracking_experiment)
    models = {name: (model, summary) for name, (model, summary, _) in loaded.items()}
    classifier, classifier_sha = load_classifier(classifier_path, tracking_experiment)
    tags = {
        **tracking.standard_tags("evaluate", data_sha),
        **custody.scored_names(vae.dir.name, ae.dir.name),
        custody.SCORED_CLASSIFIER: classifier_sha,
    }
    for name, (_, _, (run_id, run_tags)) in loaded.items():  # what this run scored, and whose
        tags.update({f"vaectl.{name}_run_id": run_id, custody.SCORED[name]: run_tags[custody.CHECKPOINT.tag]})
    with tracking.start_run(tracking_experiment, "evaluate", tags) as mlrun:
        mlrun.log_params(
            {
                **flatten(params, "eval"),
                "test_images": len(test_images),
                **{
                    f"{name}.{k}": v
                    for name, (_, summary) in models.items()
                    for k, v in summary["model_config"].items()
                },
            }
        )
        with contextlib.ExitStack() as replace_together:
            staged = {
                name: replace_together.enter_context(atomic_path(reports / name)) for name in REPORT_FILES
            }
            staged_figures = replace_together.enter_context(atomic_path(figures_dir))
            report, written = _evaluate(
                params,
                models,
                models["vae"][1]["binarize"],
                classifier,
                test_images,
                test_labels,
                train_images,
                staged,
                staged_figures,
                curves,
                echo,
                workers,
            )
            log_evaluation(mlrun, report, list(staged.values()), written)
            log_model_metrics(mlrun, report, loaded, test_images, test_labels, prepared)
            digests = {name: sha256_file(path) for name, path in staged.items()}
            # the record export, register and report check these files against (custody.py)
            mlrun.set_tags(
                {
                    custody.METRICS.tag: digests["metrics.json"],
                    custody.EVALUATE_SUMMARY.tag: digests["summary.json"],
                    custody.EVALUATE_FIGURES.tag: folder_sha256(staged_figures),
                }
            )
    return report, mlrun.run_id


def load_both(files: dict[str, ModelFiles], data_sha: str, experiment: str) -> tuple[dict, dict]:
    """({kind: (model, training summary, its training run)}, {kind: training curves}), each
    file checked against its training run's record, read while no training writes them; the
    two must share one binarisation protocol for their test numbers to compare."""
    with contextlib.ExitStack() as reading:
        for f in files.values():
            reading.enter_context(shared_dir(f.dir, "`vaectl train`"))
        loaded = {name: load_trained(f.dir, name, data_sha, experiment) for name, f in files.items()}
        curves = {
            name: training_curves(files[name].curves, name, run) for name, (_, _, run) in loaded.items()
        }
    if len({summary["binarize"] for _, summary, _ in loaded.values()}) != 1:
        raise UserError(
            "the VAE and the AE were trained with different train.*.binarize settings; "
            "their test numbers would not be comparable"
        )
    return loaded, curves


def training_curves(path: Path, kind: str, run: tuple[str, dict]) -> list[dict]:
    """The per-epoch history `vaectl train` wrote beside a checkpoint, checked against its
    training run's record; none when the file is not there (the figure leaves it out)."""
    if not path.exists():
        return []
    custody.check_sibling(path, custody.CURVES, *run, kind)
    history = read_json(path, "vaectl train", kind=list)
    if not all(isinstance(h, dict) and {"epoch", "val_loss", "train_loss"} <= h.keys() for h in history):
        raise UserError(
            f"{path} is malformed (an epoch without epoch/train_loss/val_loss); "
            "it is written by `vaectl train`: run it again"
        )
    return history


def score_model(
    name, model, x, x_pixels, train_x, pairs, params: EvalParams, classifier, echo, workers
) -> tuple:
    """One model's test numbers: (metrics, latents, per-unit values, samples, interpolation
    paths by pair kind), all drawn from one generator seeded by the eval seed; the likelihoods
    on `workers` processes."""
    generator = torch.Generator().manual_seed(params.seed)
    echo(
        f"evaluate: {name}: likelihoods of {len(x)} test images"
        + (f" (IW-NLL, k={params.iw_samples})" if model.variational else "")
    )
    metrics, latents, units = likelihood_metrics(
        model,
        x,
        x_pixels,
        params,
        generator,
        ImageProgress(f"evaluate: {name}:", len(x), echo),
        shards.useful_workers(workers, len(x) * (ELBO_SAMPLES + params.iw_samples)),
    )
    echo(
        f"evaluate: {name}: {params.interp_pairs} same-class and {params.interp_pairs} "
        f"different-class interpolations; {params.generated} samples judged"
    )
    paths = {}
    for kind, kind_pairs in pairs.items():
        metrics[kind], per_pair, paths[kind] = interpolation_metrics(model, x, kind_pairs, params, classifier)
        units.update({f"{kind}.{k}": v for k, v in per_pair.items()})
    samples = generate(model, train_x, params.generated, generator)
    standard_normal = model.mean_image(torch.randn(params.generated, model.latent_dim, generator=generator))
    for source, images in (("samples", samples), ("standard_normal", standard_normal)):
        judged = judge_images(classifier, images, params.hole_threshold)
        metrics[source] = {k: float(v.mean()) for k, v in judged.items()}
        units.update({f"{source}.{k}": v for k, v in judged.items()})
    return metrics, latents, units, samples, paths


def _evaluate(
    params: EvalParams,
    models: dict,
    protocol: str,
    classifier,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    train_images: np.ndarray,
    staged: dict[str, Path],
    figures_dir: Path,
    curves: dict,
    echo,
    workers: int,
) -> tuple[dict, list[Path]]:
    from vaectl import figures

    x, x_pixels = test_inputs(test_images, protocol, params.seed)
    train_x = to_unit(train_images, torch.device("cpu"))
    rng = np.random.default_rng(params.seed)
    pairs = {
        "same_class": pick_pairs(test_labels, params.interp_pairs, True, rng),
        "diff_class": pick_pairs(test_labels, params.interp_pairs, False, rng),
    }

    results, latents, paths, samples, units = {}, {}, {}, {}, {}
    for name, (model, _) in models.items():
        results[name], latents[name], units[name], samples[name], model_paths = score_model(
            name, model, x, x_pixels, train_x, pairs, params, classifier, echo, workers
        )
        paths.update({(name, kind): kind_paths for kind, kind_paths in model_paths.items()})
    echo(f"evaluate: {RESAMPLES}-resample bootstrap intervals; figures")
    comparison, vae_intervals = compare_models(units, params.seed)

    report = {
        "protocol": (
            "binarised test set (fixed seed), Bernoulli likelihood in nats/image"
            if protocol != "none"
            else "continuous [0,1] targets: BCE 'loss' in nats/image, not a likelihood"
        ),
        "test_images": len(test_images),
        "vae": results["vae"],
        "ae": results["ae"],
        "interp_pairs": params.interp_pairs,
        "real_images": {
            k: float(v.mean()) for k, v in judge_images(classifier, x_pixels, params.hole_threshold).items()
        },
        "comparison": comparison,
        "vae_intervals": vae_intervals,
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": params.seed},
    }
    for name, content in (
        ("metrics.json", report),
        ("summary.json", headline(report)),
        ("latents.json", latents),
    ):
        write_json(staged[name], content)
    written = figures.evaluation_figures(
        figures_dir, models, x_pixels, test_labels, paths, pairs, samples, curves
    )
    return report, written


def headline(report: dict) -> dict:
    """summary.json, the DVC metric: the numbers `dvc metrics show` and `dvc exp show` lead
    with (the VAE's likelihood, both models' reconstruction, how many compared metrics each
    model wins at 95%, how many are equivalent within their margins and how many are
    inconclusive). Every number with its interval is in metrics.json."""
    counts = {word: 0 for word in VERDICT_WORDS}
    for c in report["comparison"].values():
        counts[c["verdict"]] += 1
    numbers = {kind: {k: report[kind][k] for k in metric_table.headline(kind)} for kind in ("vae", "ae")}
    return {
        **numbers,
        "comparisons": {
            "vae_better": counts["better"],
            "ae_better": counts["worse"],
            "equivalent": counts["equivalent"],
            "inconclusive": counts["inconclusive"],
        },
    }


def comparison_markdown(report: dict) -> str:
    """The evaluate table as markdown (an MLflow artifact beside metrics.json)."""
    lines = [
        f"VAE vs AE on {report['test_images']} test images and {report['interp_pairs']} pairs "
        f"of each kind; 95% bootstrap intervals. {report['protocol']}.",
        "",
        "| metric | VAE | AE | VAE/AE | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(report)]
    return "\n".join(lines) + "\n"


def log_model_metrics(
    mlrun, report: dict, loaded: dict, test_images: np.ndarray, test_labels: np.ndarray, prepared: Path
) -> None:
    """Each model's test numbers on its training run's LoggedModel, against the test set, so
    that MLflow's Models tab compares the models by them."""
    from vaectl import tracking

    test_set = mlrun.dataset(test_images, test_labels, *split_label(prepared, "test"))
    mlrun.log_input(test_set, context="evaluation")
    for name, (_, _, (_, run_tags)) in loaded.items():
        if custody.LOGGED_MODEL not in run_tags:  # trained before vaectl logged models (0.1.0)
            continue
        own = {f"test.{k}": v for k, v in flatten_model_metrics(report[name]).items() if k != "iw_k"}
        tracking.log_model_metrics(run_tags[custody.LOGGED_MODEL], own, test_set)


def log_evaluation(mlrun, report: dict, reports: list[Path], figure_paths: list[Path]) -> None:
    """Metrics with readable nested names (vae.diff_class.ppl, vae_over_ae.recon_bce and its
    interval), the reports and the table as artifacts, the figures."""
    metrics = {
        f"{name}.{k}": v
        for name in ("vae", "ae")
        for k, v in flatten_model_metrics(report[name]).items()
        if k != "iw_k"
    }
    for name, c in report["comparison"].items():
        if c["ratio"] is not None:
            metrics.update(
                {
                    f"vae_over_ae.{name}": c["ratio"],
                    f"vae_over_ae.{name}.ci_low": c["ratio_ci"][0],
                    f"vae_over_ae.{name}.ci_high": c["ratio_ci"][1],
                }
            )
    mlrun.log_metrics(metrics)
    mlrun.set_tags({"vaectl.protocol": report["protocol"]})
    mlrun.log_text(comparison_markdown(report), "comparison.md")
    for path in reports:
        mlrun.log_artifact(path)
    for path in figure_paths:
        mlrun.log_artifact(path, "figures")
