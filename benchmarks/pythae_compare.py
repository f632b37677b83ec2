"""vaectl's VAE training against pythae 0.1.2's, the same MLP on the same data, over seeds.

pythae (Chadebec et al. 2022) is the other open library of VAE variants. Here it trains
exactly vaectl's default network (params.yaml's `model`: the same encoder, head and decoder
modules, created from the same seed), with vaectl's default protocol: Adam at train.vae.lr,
batch train.vae.batch_size, train.vae.epochs epochs, each training image re-binarised
whenever it is drawn (a Dataset that draws x ~ Bernoulli(pixel)), validation on the
validation split binarised once, and the best-validation weights kept (pythae's
`best_model`, vaectl's best.pt). Early stopping is off in both, so both run every epoch.
pythae's loss is its own: BCE on sigmoid outputs plus KL, averaged over the batch.

Each seed trains both, in the same process one after the other, under torch's defaults (the
core count in threads, the CPU's native kernels: vaectl's portable numerics are a pipeline
setting, not applied here). Both are scored by vaectl's IW-NLL (k importance samples)
on the same binarised test images; per seed the paired difference vaectl - pythae gets its
bootstrap interval over the test images, and the seeds are combined with vaectl.inference
(the seeds' spread and each seed's evaluation error, as the study does), with its verdict
against the IW-NLL's declared margin (metric_table.py). Training throughput: images per
second of each whole training call (validation, checkpoints and, for vaectl, MLflow logging
included), and vaectl's speed-up (pythae's time / vaectl's) per seed.

pythae is not in the lock (it needs no package the lock lacks but imageio):

    .venv/bin/pip install --no-deps pythae==0.1.2 imageio
    python benchmarks/pythae_compare.py --prepared data/prepared --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaectl import inference, novelty
from vaectl.data import load_split
from vaectl.data.tensors import binarize, to_unit
from vaectl.metric_table import measure
from vaectl.models import AutoEncoder, from_config
from vaectl.params import Params, load_params
from vaectl.report import compare_units
from vaectl.train import run as vaectl_train


def pythae_vae(net: AutoEncoder):
    """pythae's VAE whose encoder and decoder are `net`'s own modules (one instance, shared,
    so that pythae's best-model copy stays one network)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            mu, logvar = self.net.encode(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net.decode(z)).reshape(len(z), 1, 28, 28))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=net.latent_dim, reconstruction_loss="bce")
    return VAE(config, encoder=Encoder(), decoder=Decoder())


def dynamically_binarised(pixels: torch.Tensor):
    """pythae's dataset type, drawing x ~ Bernoulli(pixel) at every access (torch's global
    generator, which pythae's trainer seeds)."""
    from pythae.data.datasets import BaseDataset, DatasetOutput

    class Binarised(BaseDataset):
        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]))

    return Binarised(pixels.reshape(len(pixels), 1, 28, 28), torch.zeros(len(pixels)))


def train_pythae(params: Params, seed: int, train_pixels, val_binary, out: Path) -> tuple[AutoEncoder, float]:
    from pythae.data.datasets import BaseDataset
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    hp = params.train.vae
    torch.manual_seed(seed)
    net = AutoEncoder(params.model, hp.latent_dim, variational=True)
    config = BaseTrainerConfig(
        output_dir=str(out),
        num_epochs=hp.epochs,
        learning_rate=hp.lr,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=params.eval.batch_size,
        optimizer_cls="Adam",
        seed=seed,
        no_cuda=True,
    )
    pipeline = TrainingPipeline(training_config=config, model=pythae_vae(net))
    val = BaseDataset(val_binary.reshape(len(val_binary), 1, 28, 28), torch.zeros(len(val_binary)))
    began = time.perf_counter()
    pipeline(train_data=dynamically_binarised(train_pixels), eval_data=val)
    seconds = time.perf_counter() - began
    return pipeline.trainer._best_model.encoder.net.eval(), seconds


def train_vaectl(params: Params, prepared: Path, out: Path) -> tuple[AutoEncoder, float]:
    began = time.perf_counter()
    summary = vaectl_train("vae", params, prepared, out / "vae", out / "curves.json")
    seconds = time.perf_counter() - began
    model = from_config(summary["model_config"])
    model.load_state_dict(torch.load(out / "vae" / "best.pt", weights_only=True)["model"])
    return model.eval(), seconds


def per_image_nll(model: AutoEncoder, x: torch.Tensor, k: int, batch: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    return np.concatenate(
        [novelty.iw_nll(model, x[s : s + batch], k, gen).numpy() for s in range(0, len(x), batch)]
    )


def seeded_params(params: Params, seed: int) -> Params:
    vae = dataclasses.replace(params.train.vae, seed=seed, patience=0)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, vae=vae))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="both trainings' epochs (default train.vae.epochs)")
    parser.add_argument("--iw-samples", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("pythae").setLevel(logging.WARNING)

    base = load_params(args.params)
    if args.epochs:
        base = dataclasses.replace(
            base,
            train=dataclasses.replace(
                base.train, vae=dataclasses.replace(base.train.vae, epochs=args.epochs)
            ),
        )
    train_pixels = to_unit(load_split(args.prepared, "train")[0], torch.device("cpu"))
    val_binary = binarize(
        to_unit(load_split(args.prepared, "val")[0], torch.device("cpu")), torch.Generator().manual_seed(0)
    )
    test_binary = binarize(
        to_unit(load_split(args.prepared, "test")[0], torch.device("cpu")),
        torch.Generator().manual_seed(base.eval.seed),
    )
    differences, ratios = [], []
    columns = (("seed", 4), ("vaectl IW-NLL", 15), ("pythae IW-NLL", 15), ("vaectl - pythae [95%]", 28))
    columns += (("vaectl img/s", 14), ("pythae img/s", 14), ("speed-up", 9))
    print("".join(f"{name:>{width}}" for name, width in columns))
    for seed in args.seeds:
        params = seeded_params(base, seed)
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
            ours, ours_s = train_vaectl(params, args.prepared, Path(tmp))
            theirs, theirs_s = train_pythae(params, seed, train_pixels, val_binary, Path(tmp) / "pythae")
        nll_ours = per_image_nll(ours, test_binary, args.iw_samples, base.eval.batch_size)
        nll_theirs = per_image_nll(theirs, test_binary, args.iw_samples, base.eval.batch_size)
        c = compare_units("iw_nll", nll_ours, nll_theirs, True, np.random.default_rng(seed))
        differences.append(inference.estimate("identity", c["difference"], c["difference_ci"]))
        ratios.append(inference.estimate("log", c["ratio"], c["ratio_ci"]))
        images = params.train.vae.epochs * len(train_pixels)
        print(
            f"{seed:>4}{c['vae']:>15.2f}{c['ae']:>15.2f}"
            f"{c['difference']:>+10.2f} [{c['difference_ci'][0]:+.2f}, {c['difference_ci'][1]:+.2f}]"
            f"{images / ours_s:>14.0f}{images / theirs_s:>14.0f}{theirs_s / ours_s:>9.2f}"
        )
    centre, low, high = inference.combined(differences)
    declared = measure("iw_nll")
    word = inference.verdict(differences, ratios, declared.margin, declared.lower_is_better)
    print(
        f"vaectl - pythae IW-NLL over {len(args.seeds)} training seeds: "
        f"{centre:+.2f} [{low:+.2f}, {high:+.2f}] "
        f"nats (seeds and evaluation; {word}, margin {declared.margin}: vaectl as 'VAE', pythae as 'AE'); "
        f"{torch.get_num_threads()} threads, k={args.iw_samples}, {base.train.vae.epochs} epochs"
    )


if __name__ == "__main__":
    main()
