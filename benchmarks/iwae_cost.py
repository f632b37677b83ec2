"""Cost of the importance-weighted NLL: seconds per 1,000 test images at a given k.

Uses the trained VAE in models/vae and the prepared test split (binarised with a fixed seed),
the same batched code path as `vaectl evaluate` (all images of a batch and a chunk of samples
decoded at once, combined with a running log-sum-exp).

    python benchmarks/iwae_cost.py --k 5000 --images 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vaectl.checkpoints import load_trained
from vaectl.data import load_split, manifest_sha256
from vaectl.data.tensors import binarize, to_unit
from vaectl.objectives import iwae_log_likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--model", type=Path, default=Path("models/vae"))
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=250)
    args = parser.parse_args()

    model, _ = load_trained(args.model, "vae", manifest_sha256(args.prepared))
    x = to_unit(load_split(args.prepared, "test")[0][: args.images], torch.device("cpu"))
    x = binarize(x, torch.Generator().manual_seed(0))
    began = time.perf_counter()
    nll = torch.cat([-iwae_log_likelihood(model, x[s : s + args.batch], args.k, args.chunk,
                                          torch.Generator().manual_seed(0))
                     for s in range(0, len(x), args.batch)])
    seconds = time.perf_counter() - began
    print(f"k={args.k}, {len(x)} images, batch {args.batch}, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads: {seconds:.1f} s "
          f"= {seconds / len(x) * 1000:.0f} s per 1,000 images (mean IW-NLL {nll.mean():.2f} nats)")


if __name__ == "__main__":
    main()
