"""`vaectl evaluate --baseline ae`: what the VAE's probabilistic latent space buys, in numbers.

On the test split, for the model (a VAE) and its baseline (an AE) trained on the same data:
likelihood (negative ELBO and its parts, importance-weighted NLL, bits/dim: VAE only),
reconstruction error, latent usage, interpolation smoothness on the same seeded test pairs,
and the realism of interpolation midpoints and of generated samples as judged by a small
classifier. Writes reports/metrics.json (a DVC metric), reports/latents.json and figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from vaectl import UserError
from vaectl.classifier import confidence, load_classifier
from vaectl.data import load_split, manifest_sha256
from vaectl.files import write_json
from vaectl.interpolation import decode_path, path_metrics, path_ppl
from vaectl.models import AutoEncoder, from_config
from vaectl.objectives import bernoulli_nll, gaussian_kl, iwae_log_likelihood
from vaectl.params import EvalParams
from vaectl.train import binarize, to_unit

LOWER_IS_BETTER = ("neg_elbo", "iw_nll", "bits_per_dim", "recon_bce", "recon_mse",
                   "path_length_ratio", "step_unevenness", "ppl", "entropy")


def load_trained(model_dir: Path, expected_kind: str, data_sha: str) -> tuple[AutoEncoder, dict]:
    best, summary_path = model_dir / "best.pt", model_dir / "summary.json"
    if not best.exists() or not summary_path.exists():
        raise UserError(f"no trained model in {model_dir} (run `vaectl train --model {expected_kind}`)")
    summary = json.loads(summary_path.read_text())
    if summary["model_config"]["kind"] != expected_kind:
        raise UserError(f"{model_dir} holds a {summary['model_config']['kind']} model, "
                        f"expected a {expected_kind}")
    if summary["data_sha256"] != data_sha:
        raise UserError(f"{model_dir} was trained on other data than {data_sha[:12]}… "
                        "(retrain, or fetch the data it was trained on)")
    state = torch.load(best, map_location="cpu", weights_only=True)
    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval(), summary


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


@torch.no_grad()
def latent_prior(model: AutoEncoder, train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, Cholesky factor) of the latent distribution to sample from: the VAE's prior
    N(0, I); for the AE, which has no prior, a full-covariance Gaussian fitted to its
    training latents."""
    if model.variational:
        return torch.zeros(model.latent_dim), torch.eye(model.latent_dim)
    latents = torch.cat([model.encode(train_x[s : s + 1000])[0] for s in range(0, len(train_x), 1000)])
    cov = torch.cov(latents.T).reshape(model.latent_dim, model.latent_dim)
    return latents.mean(0), torch.linalg.cholesky(cov + 1e-6 * torch.eye(model.latent_dim))


@torch.no_grad()
def generate(model: AutoEncoder, train_x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    mean, chol = latent_prior(model, train_x)
    z = mean + torch.randn(n, model.latent_dim, generator=generator) @ chol.T
    return model.mean_image(z)


def compare(vae: dict, ae: dict) -> list[tuple[str, float | None, float | None, str]]:
    """Rows (metric, vae, ae, better) for every metric either model has."""
    rows = []
    for name in list(dict.fromkeys([*vae, *ae])):
        a, b = vae.get(name), ae.get(name)
        better = ""
        if a is not None and b is not None and a != b and name not in ("iw_k", "active_units"):
            lower = any(name.endswith(k) for k in LOWER_IS_BETTER)
            better = "vae" if (a < b) == lower else "ae"
        rows.append((name, a, b, better))
    return rows


def flatten_model_metrics(m: dict) -> dict:
    flat = {k: v for k, v in m.items() if not isinstance(v, dict)}
    for group, values in m.items():
        if isinstance(values, dict):
            flat.update({f"{group}.{k}": v for k, v in values.items()})
    return flat


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
    log_evaluation(report, models, written, tracking_experiment, data_sha)
    return report


def log_evaluation(report: dict, models: dict, figure_paths: list[Path], experiment: str,
                   data_sha: str) -> None:
    """One MLflow run per evaluation, in the same pipeline group as the training runs."""
    from vaectl import tracking

    tags = {**tracking.standard_tags("evaluate", data_sha),
            **{f"vaectl.{name}_run_id": summary["run_id"] for name, (_, summary) in models.items()}}
    with tracking.start_run(experiment, "evaluate", tags) as run:
        metrics = {f"{name}.{k}": v for name in ("vae", "ae")
                   for k, v in flatten_model_metrics(report[name]).items()}
        metrics.update({f"vae_over_ae.{k}": v for k, v in report["vae_over_ae"].items()})
        run.log_metrics(metrics)
        run.set_tags({"vaectl.protocol": report["protocol"]})
        for path in figure_paths:
            run.log_artifact(path, "figures")
