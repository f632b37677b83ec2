"""IW-NLL cost: the previous code path against the current one, on the same images, in one run.

The previous path (kept below as `previous_iwae`, the code `vaectl evaluate` ran before)
decoded 250 samples x 100 images at once (78 MB of logits, out of cache) and summed
softplus(l) - x l. The current one (`vaectl.objectives.iwae_log_likelihood`) decodes 25 x 100
at a time, uses the binary-x likelihood, and runs the decoder in eval.iw_precision. Both draw
the same noise from the same seeded generators, so the float32 paths must agree to ~1e-6
nats and the bfloat16 one to within 0.02. Uses a trained VAE and the prepared test split,
binarised as `vaectl evaluate` does.

    python benchmarks/iwae_cost.py --images 500             # after `make repro`
    python benchmarks/iwae_cost.py --prepared DIR --model DIR --images 1000
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.evaluate import test_inputs
from vaectl.objectives import bernoulli_nll, iwae_log_likelihood

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def previous_iwae(model, x: torch.Tensor, k: int, chunk: int, generator: torch.Generator) -> torch.Tensor:
    """The IW-NLL as computed before the faster path (its log p(x) per image)."""
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    total = torch.full((len(x),), -math.inf)
    done = 0
    while done < k:
        s = min(chunk, k - done)
        eps = torch.randn((s, *mu.shape), dtype=mu.dtype, generator=generator)
        z = mu + eps * std
        logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(s, len(x), -1)
        log_px_z = -bernoulli_nll(logits, x)
        log_pz = -0.5 * (LOG_2PI + z.pow(2)).sum(-1)
        log_qz = -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)
        total = torch.logaddexp(total, torch.logsumexp(log_px_z + log_pz - log_qz, dim=0))
        done += s
    return total - math.log(k)


def timed(label: str, fn, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    began = time.perf_counter()
    nll = torch.cat(
        [-fn(x[s : s + batch], torch.Generator().manual_seed(s)).double() for s in range(0, len(x), batch)]
    )
    seconds = time.perf_counter() - began
    print(
        f"{label:<34} {seconds:7.1f} s  {seconds / len(x) * 10_000 / 60:6.1f} min per 10,000 images  "
        f"mean IW-NLL {nll.mean():.4f}",
        flush=True,
    )
    return nll, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--model", type=Path, default=Path("models/vae"))
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    model, summary, _ = load_trained(args.model, "vae", manifest_sha256(args.prepared), "vaectl")
    x, _ = test_inputs(load_split(args.prepared, "test")[0][: args.images], summary["binarize"], seed=0)
    print(
        f"{model.config()}, k={args.k}, {len(x)} test images, batches of {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    old, old_s = timed(
        "previous (chunk 250, float32)", lambda xb, g: previous_iwae(model, xb, args.k, 250, g), x, args.batch
    )
    for label, dtype in (
        ("current (chunk 25, float32)", None),
        ("current (chunk 25, bfloat16)", torch.bfloat16),
    ):
        new, new_s = timed(
            label, lambda xb, g, d=dtype: iwae_log_likelihood(model, xb, args.k, 25, g, d), x, args.batch
        )
        print(
            f"{'':<34} {old_s / new_s:.2f}x faster; mean differs by {float((new - old).mean()):+.5f} nats "
            f"(largest per image {float((new - old).abs().max()):.3f})"
        )


if __name__ == "__main__":
    main()
