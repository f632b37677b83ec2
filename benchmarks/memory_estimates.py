"""Measured peak memory of each computation that `vaectl.params.memory_estimates` bounds,
beside its estimate: the estimates must stay upper bounds (exit 1 if one is not).

Each computation runs in a fresh process on random inputs of the params' shapes; its figure
is the rise of the process's peak RSS over its RSS just before the computation, so torch's
own libraries and the model's weights made beforehand are not counted (the weights are in
the estimate: an upper bound either way).

    python benchmarks/memory_estimates.py                   # params.yaml
    python benchmarks/memory_estimates.py --params p.yaml   # any params file
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

COMPUTATIONS = (
    "the VAE's training step",
    "the AE's training step",
    "the VAE's likelihood batch",
    "the VAE's interpolations",
    "the VAE's generated set",
    "the ood stage's -ELBO batch",
)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(what: str, params_path: Path) -> int:
    """The peak RSS rise of one computation, in this process."""
    import torch

    from vaectl.interpolation import decode_path, path_metrics, path_ppl
    from vaectl.models import build_model
    from vaectl.objectives import iwae_log_likelihood, loss_terms
    from vaectl.params import ELBO_SAMPLES, load_params

    torch.set_num_threads(1)
    p = load_params(params_path)
    kind = "ae" if "AE's" in what and "VAE's" not in what else "vae"
    t = p.train.vae if kind == "vae" else p.train.ae
    model = build_model(kind, p.model, t.latent_dim)
    e = p.eval
    if "training step" in what:
        opt = torch.optim.Adam(model.parameters())
        x = torch.rand(t.batch_size, 784).bernoulli()
        before = peak_rss()
        loss_terms(model, x)[0].backward()
        opt.step()
    elif "likelihood" in what:
        x = torch.rand(e.batch_size, 784).bernoulli()
        before = peak_rss()
        with torch.no_grad():
            iwae_log_likelihood(model, x, max(e.iw_chunk, ELBO_SAMPLES), max(e.iw_chunk, ELBO_SAMPLES))
    elif "-ELBO" in what:
        from vaectl.novelty import neg_elbo

        x = torch.rand(e.batch_size, 784).bernoulli()
        before = peak_rss()
        with torch.no_grad():
            neg_elbo(model, x, max(p.ood.elbo_samples, e.iw_chunk), torch.Generator().manual_seed(0))
    elif "interpolations" in what:
        z0, z1 = torch.randn(e.interp_pairs, t.latent_dim), torch.randn(e.interp_pairs, t.latent_dim)
        before = peak_rss()
        with torch.no_grad():
            paths = decode_path(model.mean_image, z0, z1, e.interp_steps, e.interp_mode)
            path_metrics(paths)
            path_ppl(model.mean_image, z0, z1, e.ppl_epsilon, e.ppl_samples, e.interp_mode)
    else:
        z = torch.randn(e.generated, t.latent_dim)
        before = peak_rss()
        with torch.no_grad():
            model.mean_image(z)
    return peak_rss() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.params)))
        return 0
    from vaectl.params import load_params, memory_estimates

    estimates = memory_estimates(load_params(args.params))
    print(f"{'computation':32} {'estimate MiB':>13} {'measured MiB':>13} {'ratio':>6}")
    ok = True
    for what in COMPUTATIONS:
        out = subprocess.run(
            [sys.executable, __file__, "--params", str(args.params), "--one", what],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        measured, estimate = json.loads(out), estimates[what][0]
        ok &= measured <= estimate
        ratio = estimate / max(measured, 1)
        print(f"{what:32} {estimate / 2**20:13.1f} {measured / 2**20:13.1f} {ratio:6.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
