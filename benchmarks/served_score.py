"""What the registered models' score mode flags: the test split against another dataset's test
images and against the test images upside down, scored through each verified pyfunc exactly
as `vaectl predict --mode score` scores them. AUROC with 95% bootstrap intervals (VAE against
AE paired, with a verdict) and the share flagged at each version's calibrated threshold.

Needs registered models (`make repro`) and the other dataset's IDX files, for example Debian's
dataset-fashion-mnist:

    python benchmarks/served_score.py --other /usr/share/datasets/fashion-mnist --images 2000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from vaectl import novelty, registry
from vaectl.data import load_split
from vaectl.data.idx import read_images_labels
from vaectl.tracking import registry_client

RESAMPLES = 2000


def share_with_interval(flags: np.ndarray, rng: np.random.Generator) -> str:
    boots = [flags[rng.integers(0, len(flags), len(flags))].mean() for _ in range(RESAMPLES)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return f"{flags.mean():.3f} [{low:.3f}, {high:.3f}]"


def served_scores(ref: str, sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each set's N x 2 score-mode output of the verified registered model `ref`."""
    with tempfile.TemporaryDirectory() as tmp:
        _, _, bundle, _ = registry.download_verified(ref, Path(tmp))
        model = registry_client.load_pyfunc(str(bundle))
        return {name: model.predict(x, params={"mode": "score"}) for name, x in sets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="vae-mnist@champion")
    parser.add_argument("--ae", default="ae-mnist@champion")
    parser.add_argument("--other", type=Path, required=True, help="a folder with t10k-*-ubyte.gz")
    parser.add_argument("--images", type=int, default=2000, help="how many of its test images")
    args = parser.parse_args()

    test = load_split(Path("data/prepared"), "test")[0].reshape(-1, 784).astype(np.float32) / 255
    other, _ = read_images_labels(
        args.other / "t10k-images-idx3-ubyte.gz", args.other / "t10k-labels-idx1-ubyte.gz", 10_000
    )
    sets = {
        "test": test,
        "other": other[: args.images].reshape(-1, 784).astype(np.float32) / 255,
        "upside down": test.reshape(-1, 28, 28)[:, ::-1, :].reshape(-1, 784).copy(),
    }
    found = {"vae": served_scores(args.vae, sets), "ae": served_scores(args.ae, sets)}
    rng = np.random.default_rng(0)
    for kind, scored in found.items():
        print(f"{kind}: test images flagged {share_with_interval(scored['test'][:, 1], rng)}")
    for name in ("other", "upside down"):
        normal = {kind: scored["test"][:, 0] for kind, scored in found.items()}
        novel = {kind: scored[name][:, 0] for kind, scored in found.items()}
        detected = novelty.detection(normal, novel, [("vae", "ae")], RESAMPLES, np.random.default_rng(1))
        for kind in found:
            auroc = detected["scores"][kind]["auroc"]
            flagged = share_with_interval(found[kind][name][:, 1], rng)
            print(
                f"{name}: {kind} AUROC {auroc['value']:.3f} [{auroc['ci'][0]:.3f}, {auroc['ci'][1]:.3f}],"
                f" flagged {flagged}"
            )
        versus = detected["comparisons"]["vae - ae"]["auroc"]
        print(
            f"{name}: VAE - AE AUROC {versus['value']:+.3f} "
            f"[{versus['ci'][0]:+.3f}, {versus['ci'][1]:+.3f}], {versus['verdict']}"
        )


if __name__ == "__main__":
    main()
