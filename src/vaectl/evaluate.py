"""`vaectl evaluate --baseline ae`: what the VAE's probabilistic latent space buys, in numbers.

On the test split, for the model (a VAE) and its baseline (an AE) trained on the same data:
likelihood (negative ELBO and its parts, importance-weighted NLL, bits/dim: VAE only),
reconstruction error, latent usage, interpolation smoothness on the same seeded test pairs,
and the realism of interpolation midpoints and of generated samples as judged by a small
classifier. Writes reports/metrics.json (a DVC metric), reports/latents.json and figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaectl import UserError
from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.data.tensors import binarize, to_unit
from vaectl.files import sha256_file, write_json
from vaectl.interpolation import decode_path, path_metrics, path_ppl
from vaectl.judge import confidence, load_classifier
from vaectl.models import AutoEncoder
from vaectl.objectives import bernoulli_nll, gaussian_kl, iwae_log_likelihood
from vaectl.params import EvalParams
from vaectl.prior import generate
from vaectl.report import flatten_model_metrics


@torch.no_grad()
def expected_recon_nll(model: AutoEncoder, x: torch.Tensor, samples: int,
                       generator: torch.Generator) -> torch.Tensor:
    """E_q(z|x)[-log p(x|z)] per image, Monte-Carlo over `samples` draws."""
    mu, logvar = model.encode(x)
    eps = torch.randn((samples, *mu.shape), generator=generator)
    return bernoulli_nll(model.decode(mu + eps * torch.exp(0.5 * logvar)), x).mean(0)


@torch.no_grad()
def likelihood_metrics(model: AutoEncoder, x: torch.Tensor, x_pixels: torch.Tensor,
                       params: EvalParams, generator: torch.Generator) -> tuple[dict, dict]:
    """(metrics, latent statistics) over the test set, batched; no per-image Python loop."""
    sums: dict[str, float] = {}
    mus, kl_dims = [], []

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.sum())

    for start in range(0, len(x), params.batch_size):
        xb, pb = x[start : start + params.batch_size], x_pixels[start : start + params.batch_size]
        mu, logvar = model.encode(xb)
        logits = model.decode(mu)
        add("recon_bce", bernoulli_nll(logits, xb))
        add("recon_mse", (torch.sigmoid(logits) - pb).pow(2).mean(-1))
        mus.append(mu)
        if logvar is not None:
            kl = gaussian_kl(mu, logvar)
            recon = expected_recon_nll(model, xb, 100, generator)
            add("elbo_recon", recon)
            add("elbo_kl", kl)
            add("neg_elbo", recon + kl)
            add("iw_nll", -iwae_log_likelihood(model, xb, params.iw_samples, params.iw_chunk, generator))
            kl_dims.append(0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar))
    metrics = {name: total / len(x) for name, total in sums.items()}
    mu_all = torch.cat(mus)
    variance = mu_all.var(0)
    latents = {"encoder_mean_variance": variance.tolist()}
    if kl_dims:
        metrics["bits_per_dim"] = metrics["iw_nll"] / (784 * math.log(2))
        metrics["iw_k"] = params.iw_samples
        metrics["active_units"] = int((variance > 0.01).sum())
        latents["kl_per_dim"] = torch.cat(kl_dims).mean(0).tolist()
        latents["active_units"] = metrics["active_units"]
    return metrics, latents


def pick_pairs(labels: np.ndarray, n: int, same_class: bool, rng: np.random.Generator) -> np.ndarray:
    """n index pairs (i, j), i != j, with equal (same_class) or different labels."""
    pairs = []
    while len(pairs) < n:
        i, j = rng.choice(len(labels), 2, replace=False)
        if (labels[i] == labels[j]) == same_class:
            pairs.append((i, j))
    return np.array(pairs)


@torch.no_grad()
def interpolation_metrics(model: AutoEncoder, x: torch.Tensor, pairs: np.ndarray,
                          params: EvalParams, classifier, seed: int) -> tuple[dict, torch.Tensor]:
    mu = model.encode(x)[0]
    z0, z1 = mu[pairs[:, 0]], mu[pairs[:, 1]]
    decode = model.mean_image
    paths = decode_path(decode, z0, z1, params.interp_steps, params.interp_mode)
    per_pair = path_metrics(paths)
    per_pair["ppl"] = path_ppl(decode, z0, z1, params.ppl_epsilon, params.ppl_samples,
                               torch.Generator().manual_seed(seed), params.interp_mode)
    metrics = {name: float(values.mean()) for name, values in per_pair.items()}
    midpoints = decode_path(decode, z0, z1, 2, params.interp_mode)[:, 1]
    metrics.update({f"midpoint_{k}": v for k, v in confidence(classifier, midpoints).items()})
    return metrics, paths


def run(params: EvalParams, prepared: Path, model_dir: Path, baseline_dir: Path,
        classifier_path: Path, reports: Path, figures_dir: Path, tracking_experiment: str) -> dict:
    from vaectl import figures

    data_sha = manifest_sha256(prepared)
    test_images, test_labels = load_split(prepared, "test")
    train_images, _ = load_split(prepared, "train")
    models = {"vae": load_trained(model_dir, "vae", data_sha),
              "ae": load_trained(baseline_dir, "ae", data_sha)}
    protocols = {summary["binarize"] for _, summary in models.values()}
    if len(protocols) != 1:
        raise UserError("the VAE and the AE were trained with different train.*.binarize settings; "
                        "their test numbers would not be comparable")
    protocol = protocols.pop()
    classifier = load_classifier(classifier_path)
    cpu = torch.device("cpu")
    x_pixels, train_x = to_unit(test_images, cpu), to_unit(train_images, cpu)
    x = x_pixels if protocol == "none" else binarize(x_pixels, torch.Generator().manual_seed(params.seed))
    rng = np.random.default_rng(params.seed)
    pairs = {"same_class": pick_pairs(test_labels, params.interp_pairs, True, rng),
             "diff_class": pick_pairs(test_labels, params.interp_pairs, False, rng)}

    results, latents, paths, samples = {}, {}, {}, {}
    for name, (model, _) in models.items():
        generator = torch.Generator().manual_seed(params.seed)
        metrics, latents[name] = likelihood_metrics(model, x, x_pixels, params, generator)
        for kind, kind_pairs in pairs.items():
            metrics[kind], paths[(name, kind)] = interpolation_metrics(
                model, x, kind_pairs, params, classifier, params.seed)
        samples[name] = generate(model, train_x, params.generated, generator)
        metrics["samples"] = confidence(classifier, samples[name])
        results[name] = metrics

    ratios = {f"{kind}.{m}": results["vae"][kind][m] / results["ae"][kind][m]
              for kind in pairs for m in ("path_length_ratio", "step_unevenness", "ppl")}
    report = {
        "protocol": ("binarised test set (fixed seed), Bernoulli likelihood in nats/image"
                     if protocol != "none" else
                     "continuous [0,1] targets: BCE 'loss' in nats/image, not a likelihood"),
        "test_images": len(test_images),
        "vae": results["vae"], "ae": results["ae"],
        "real_images": confidence(classifier, x_pixels),
        "vae_over_ae": ratios,
    }
    write_json(reports / "metrics.json", report)
    write_json(reports / "latents.json", latents)
    written = figures.evaluation_figures(figures_dir, models, x_pixels, test_labels, paths, samples,
                                         reports)
    log_evaluation(report, {name: model_dir / "best.pt" for name, model_dir in
                            (("vae", model_dir), ("ae", baseline_dir))},
                   written, tracking_experiment, data_sha)
    return report


def log_evaluation(report: dict, checkpoints: dict[str, Path], figure_paths: list[Path],
                   experiment: str, data_sha: str) -> None:
    """One MLflow run per evaluation, in the same pipeline group as the training runs and
    tagged with their run ids where this tracking store has them."""
    from vaectl import tracking

    tags = tracking.standard_tags("evaluate", data_sha)
    for name, checkpoint in checkpoints.items():
        run_id = tracking.latest_run_id(experiment, {tracking.CHECKPOINT_TAG: sha256_file(checkpoint)})
        if run_id:
            tags[f"vaectl.{name}_run_id"] = run_id
    with tracking.start_run(experiment, "evaluate", tags) as run:
        metrics = {f"{name}.{k}": v for name in ("vae", "ae")
                   for k, v in flatten_model_metrics(report[name]).items()}
        metrics.update({f"vae_over_ae.{k}": v for k, v in report["vae_over_ae"].items()})
        run.log_metrics(metrics)
        run.set_tags({"vaectl.protocol": report["protocol"]})
        for path in figure_paths:
            run.log_artifact(path, "figures")
