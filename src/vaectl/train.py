"""`vaectl train --model NAME --kind vae|ae`: one loop for both models.

Data are loaded once as tensors and batched by an index permutation. Every source of
randomness (permutation, binarisation, reparameterisation noise) draws from RNGs whose
states are checkpointed each epoch, so `--resume` ends with exactly the weights and
metrics of an uninterrupted run, and two runs with the same params are identical (CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vaectl import UserError, custody, numerics
from vaectl.checkpoints import load_checkpoint, save_checkpoint
from vaectl.data import load_manifest, load_split, manifest_sha256, split_label
from vaectl.data.tensors import VAL_BINARIZE_SEED, binarize, to_unit
from vaectl.distributed import (
    Launch,
    Workers,
    check_gpus,
    from_main,
    gather,
    join_workers,
    launch,
    launched,
    leave,
    peers_stopping_as_interrupt,
    sum_over_workers,
)
from vaectl.figures import image_grid
from vaectl.files import exclusive_dir, sha256_file, write_json
from vaectl.layout import ModelFiles
from vaectl.models import AutoEncoder, build_model
from vaectl.objectives import loss_terms
from vaectl.params import Params, TrainParams, flatten
from vaectl.prior import generate

RESUMABLE_CHANGES = ("epochs", "patience", "sample_every")  # train.<kind>.* a resume may change


def preflight(kind: str, params: Params, prepared: Path, out_dir: Path, resume: bool, spec: Launch) -> None:
    """The user mistakes worth catching before N processes start: no data, nothing to resume
    (or a resume with other params, or on several hosts, which would each need rank 0's
    last.pt), fewer GPUs than processes (nccl wants one per process)."""
    load_manifest(prepared)
    check_gpus(params.train.device, spec.nproc)
    if resume and spec.nodes > 1:
        raise UserError("--resume runs on one host: continue a several-host run with --nodes 1")
    if resume:
        resume_state(out_dir, spec.world, kind, params, manifest_sha256(prepared))


def run_processes(
    kind: str,
    params: Params,
    prepared: Path,
    out_dir: Path,
    resume: bool,
    spec: Launch,
    train_args: list[str],
) -> None:
    """`vaectl train --nproc N [--nodes M ...]`: the user mistakes checked once, `out_dir` held
    against a second writer, then N processes of `vaectl train TRAIN_ARGS` here, with the
    other hosts' (vaectl.distributed.launch). The files and the MLflow run are written where
    rank 0 runs. An interrupted launch raises KeyboardInterrupt; a failed process, a UserError."""
    if launched():
        raise UserError("--nproc launches torchrun; under torchrun the process count is its own")
    preflight(kind, params, prepared, out_dir, resume, spec)
    with exclusive_dir(out_dir, "`vaectl train`"):
        code = launch(spec, train_args)
    if code == 130:
        raise KeyboardInterrupt
    if code:
        raise UserError(f"a training process failed (exit {code}); see its output above")


def run_exclusive(kind: str, params: Params, prepared: Path, files: ModelFiles, resume: bool) -> dict | None:
    """`run` holding the model's folder against a second writer; a process that vaectl's own
    launcher started trains in the folder its launcher holds."""
    with contextlib.nullcontext() if launched() else exclusive_dir(files.dir, "`vaectl train`"):
        return run(kind, params, prepared, files.dir, files.curves, resume=resume)


def resume_state(out_dir: Path, world: int, kind: str, params: Params, data_sha: str) -> tuple[dict, dict]:
    """out_dir/last.pt and the params changed since it was written, if `world` processes can
    continue it (each resumes its own RNGs) on the same data with the same params, apart
    from RESUMABLE_CHANGES: anything else would silently mix two configurations."""
    path = out_dir / "last.pt"
    state = load_checkpoint(path)
    if len(state["rng"]) != world:
        raise UserError(
            f"{path} was written by {len(state['rng'])} training "
            f"process(es); resume with --nproc {len(state['rng'])}"
        )
    if state.get("data_sha256") != data_sha:
        raise UserError(
            f"{path} was trained on other data (data manifest sha256 differs); train again without --resume"
        )
    # data.* is covered by the data's own hash above (and data.mirrors changes nothing)
    saved, now = (
        {k: v for k, v in flat.items() if not k.startswith("data.")}
        for flat in (state.get("params", {}), _flat(params, kind))
    )
    changed = {
        k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
    }
    # a cosine schedule is laid over `epochs`: changing them would bend the lr curve mid-run
    resumable = [
        n
        for n in RESUMABLE_CHANGES
        if not (n == "epochs" and getattr(params.train, kind).lr_schedule != "constant")
    ]
    refused = [k for k in changed if k not in {f"train.{kind}.{name}" for name in resumable}]
    if refused:
        listed = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise UserError(
            f"cannot resume {path} with other params ({listed}); only "
            f"{', '.join(f'train.{kind}.{n}' for n in resumable)} may change. "
            f"Restore them, or train again without --resume"
        )
    return state, changed


def with_latent_dim(params: Params, kind: str, latent_dim: int) -> Params:
    """`params` with train.<kind>.latent_dim replaced (`vaectl train --latent-dim`)."""
    group = dataclasses.replace(getattr(params.train, kind), latent_dim=latent_dim)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **{kind: group}))


def normalise_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Each parameter tensor's gradient scaled to unit L2 norm (the published VAE recipe's
    "AdamNormGrad"): every layer then moves at Adam's pace whatever its gradient scale."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch._foreach_norm(grads)
    torch._foreach_add_(norms, 1e-7)
    torch._foreach_div_(grads, norms)


def learning_rate(t: TrainParams, progress: float) -> float:
    """The lr after `progress` (0..1) of the planned steps: constant, or cosine decay to 0."""
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return t.lr


@dataclass
class EpochStats:
    """What an epoch computed: determined by params and data alone, so it goes into the
    DVC-tracked curves and checkpoint. Timings go to MLflow and the log only."""

    epoch: int  # 1-based, as in the terminal, MLflow steps and the figures
    train_loss: float
    train_recon: float
    train_kl: float
    val_loss: float
    val_recon: float
    val_kl: float
    beta: float


def kl_weight(t: TrainParams, epoch: int) -> float:
    beta = getattr(t, "beta", 0.0)
    warmup = getattr(t, "kl_warmup_epochs", 0)
    return beta * min(1.0, (epoch + 1) / warmup) if warmup else beta


@torch.no_grad()
def evaluate_loss(model: AutoEncoder, x: torch.Tensor, beta: float, batch: int) -> tuple[float, float, float]:
    model.eval()
    sums = np.zeros(3)
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        sums += [float(v) * len(xb) for v in loss_terms(model, xb, beta)]
    model.train()
    loss, recon, kl = (float(v) for v in sums / len(x))
    return loss, recon, kl


class Progress:
    """A live bar on a terminal; plain log lines (one per epoch) under CI and DVC. Only one
    training process (`live`) draws the bar."""

    def __init__(self, label: str, total_batches: int, epochs: int, shows_kl: bool, live: bool = True):
        self.label, self.total, self.epochs, self.shows_kl = label, total_batches, epochs, shows_kl
        self.bar = None
        if live and sys.stderr.isatty():
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total_batches)

    def step(self, epoch: int, done: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=done,
                description=f"{self.label} epoch {epoch}/{self.epochs} loss {loss:8.2f} "
                f"{rate:8.0f} samples/s",
            )

    def epoch(self, stats: EpochStats, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.reset(self.task)
        terms = f" (recon {stats.val_recon:.2f} kl {stats.val_kl:.2f})" if self.shows_kl else ""
        print(
            f"[{self.label}] epoch {stats.epoch}/{self.epochs} train {stats.train_loss:.2f} "
            f"val {stats.val_loss:.2f}{terms} {samples_per_s:.0f} samples/s",
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _rng_state(generator: torch.Generator, device: torch.device, workers: Workers) -> list[dict]:
    """Every process's RNG states, indexed by rank (each draws its own reparameterisation
    noise), gathered so that rank 0's checkpoint can resume them all."""
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return gather(state, workers)


def _restore_rng(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopRequest:
    """Ctrl-C and SIGTERM ask training to stop at the next step boundary instead of raising
    wherever the signal lands: a KeyboardInterrupt inside an MLflow write left its SQLite
    transaction holding the database lock, so the run could not be marked KILLED. A second
    signal stops at once."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, *_):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def readable(grid: np.ndarray, scale: int = 3) -> np.ndarray:
    """A grid enlarged `scale` times by repeating pixels: 28-pixel digits are too small to
    read in the MLflow UI (242 x 122 px before)."""
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


@torch.no_grad()
def log_images(run, model: AutoEncoder, x_val: torch.Tensor, epoch: int, seed: int) -> None:
    """Reconstructions (top row: validation inputs spread over the split, which is sorted by
    class, so every digit shows; bottom row: their reconstructions) and prior samples."""
    model.eval()
    gen = torch.Generator(device=x_val.device).manual_seed(seed)
    originals = x_val[torch.linspace(0, len(x_val) - 1, 16).long()]
    recon = model.reconstruct(originals)  # at the posterior mean: no RNG draw
    grid = torch.cat([originals, recon]).cpu().numpy()
    run.log_image(readable(image_grid(grid, ncol=16)), "reconstructions_top-input_bottom-output", epoch + 1)
    if model.variational:
        if model.pseudo_inputs:  # from the VampPrior's mixture
            samples = generate(model, x_val, 64, torch.Generator().manual_seed(seed)).cpu().numpy()
        else:
            z = torch.randn(64, model.latent_dim, generator=gen, device=x_val.device)
            samples = model.mean_image(z).cpu().numpy()
        run.log_image(readable(image_grid(samples, ncol=8)), "samples", epoch + 1)
    model.train()


def run(
    kind: str, params: Params, prepared: Path, out_dir: Path, curves_path: Path, resume: bool = False
) -> dict | None:
    """Train `kind` on the prepared train split with early stopping on val.

    Writes out_dir/{last,best}.pt and out_dir/summary.json, and the per-epoch curves (a DVC
    plot) to `curves_path`; logs everything to one MLflow run. Returns the summary.

    Under torchrun, every process trains a DistributedDataParallel replica on a disjoint
    shard of each global batch (same global batch, permutation and binarisation as one
    process); rank 0 alone validates, logs and writes files, and the others return None."""
    workers, device = join_workers(params.train.device)
    try:
        return _train(Job(kind, params, out_dir, workers, device), prepared, curves_path, resume)
    finally:
        leave(workers)


@dataclass(frozen=True)
class Job:
    """The fixed facts of one training run: which model, its params, where it writes, and
    which of the processes this is."""

    kind: str
    params: Params
    out_dir: Path
    workers: Workers
    device: torch.device

    @property
    def t(self) -> TrainParams:
        return getattr(self.params.train, self.kind)


@dataclass
class Loop:
    """What training carries from step to step and epoch to epoch: the model (and its DDP
    wrapper `net`), the optimiser, the data-order RNG and the early-stopping record; last.pt
    holds all of it, so a resume continues exactly."""

    model: AutoEncoder
    net: torch.nn.Module
    optimizer: numerics.FusedAdam
    generator: torch.Generator
    history: list[dict] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0

    @property
    def stopped_early(self) -> bool:
        return bool(self.history) and self.history[-1].get("stopped_early", False)


@dataclass
class TrainingData:
    train_images: np.ndarray  # uint8, as prepared (logged to MLflow as the run's dataset)
    train_labels: np.ndarray
    x_train: torch.Tensor  # in [0, 1], binarised once under `binarize: static`
    x_val: torch.Tensor  # binarised once with its own seed unless `binarize: none`
    manifest: dict
    data_sha: str
    source: Path  # the training split's file


def _load_data(job: Job, prepared: Path, generator: torch.Generator) -> TrainingData:
    t, device = job.t, job.device
    manifest, data_sha = load_manifest(prepared), manifest_sha256(prepared)
    train_images, train_labels = load_split(prepared, "train")
    val_images, _ = load_split(prepared, "val")
    x_train, x_val = to_unit(train_images, device), to_unit(val_images, device)
    if t.binarize != "none":
        x_val = binarize(x_val, torch.Generator(device=device).manual_seed(VAL_BINARIZE_SEED))
    if t.binarize == "static":
        x_train = binarize(x_train, generator)
    return TrainingData(
        train_images, train_labels, x_train, x_val, manifest, data_sha, prepared / "train.npz"
    )


def _build_loop(job: Job, generator: torch.Generator) -> Loop:
    m, device = job.params.model, job.device
    model = build_model(job.kind, m, job.t.latent_dim).to(device)
    net: torch.nn.Module = model
    if job.workers.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return Loop(model, net, numerics.adam(model.parameters(), job.t.lr), generator)


def _resume(job: Job, loop: Loop, data_sha: str) -> tuple[str | None, dict]:
    """Load last.pt into `loop`; (the MLflow run that wrote it, the params changed since)."""
    kind, params, out_dir, workers = job.kind, job.params, job.out_dir, job.workers
    state, resumed_with = resume_state(out_dir, workers.world, kind, params, data_sha)
    if state["model_config"] != loop.model.config():
        raise UserError(
            f"{out_dir / 'last.pt'} holds a {state['model_config']} model; params ask for "
            f"{loop.model.config()}"
        )
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    _restore_rng(state["rng"][workers.rank], loop.generator, job.device)
    loop.start_epoch, loop.best_val, loop.bad_epochs = state["epoch"], state["best_val"], state["bad_epochs"]
    loop.history = state["history"]
    run_id = None
    if workers.main:  # continue the MLflow run that wrote this last.pt, and only that
        run_id, _ = custody.recorded_run(
            out_dir / "last.pt",
            custody.LAST_CHECKPOINT,
            params.tracking.experiment,
            kind,
            {custody.MODEL_NAME: out_dir.name},
            f" named {out_dir.name}",
        )
    return run_id, resumed_with


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    """A last global batch smaller than the process count cannot be shared out: it is dropped."""
    return n // batch + (n % batch >= world)


def run_epoch(
    job: Job, loop: Loop, epoch: int, x_train: torch.Tensor, progress: Progress, stop: StopRequest
) -> tuple[torch.Tensor, int]:
    """One pass over the training split: (the mean loss, recon and KL over the images used, on
    every process; how many images that was)."""
    t, workers = job.t, job.workers
    n, batch = len(x_train), t.batch_size
    steps = steps_per_epoch(n, batch, workers.world)
    beta = kl_weight(t, epoch)
    x_epoch = binarize(x_train, loop.generator) if t.binarize == "dynamic" else x_train
    order = torch.randperm(n, generator=loop.generator, device=x_train.device)
    parameters = list(loop.model.parameters())
    batch_terms, shard_sizes = [], []  # detached (loss, recon, kl) per step, reduced once per epoch
    began = time.perf_counter()
    for step in range(steps):
        global_batch = order[step * batch : (step + 1) * batch]
        xb = x_epoch[global_batch[workers.rank :: workers.world]]
        loss, recon, kl = loss_terms(loop.net, xb, beta)
        loop.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over processes: weighting each shard's mean by its share
        # makes that the mean over the global batch, as in one process.
        (loss * (len(xb) * workers.world / len(global_batch))).backward()
        if t.grad_norm:
            normalise_gradients(parameters)
        if t.lr_schedule != "constant":
            for group in loop.optimizer.param_groups:
                group["lr"] = learning_rate(t, (epoch * steps + step) / (t.epochs * steps))
        loop.optimizer.step()
        stop.check()
        batch_terms.append((loss.detach(), recon.detach(), kl.detach()))
        shard_sizes.append(len(xb))
        if progress.bar is not None and step % 10 == 0:
            rate = (step + 1) * batch / max(time.perf_counter() - began, 1e-9)
            progress.step(epoch + 1, step + 1, loss.detach().item(), rate)
    n_used = min(n, steps * batch)
    sizes = torch.tensor(shard_sizes, dtype=torch.float32, device=x_train.device)
    terms = torch.stack([torch.stack(step_terms) for step_terms in batch_terms])
    return sum_over_workers(sizes @ terms, workers) / n_used, n_used


def close_epoch(
    job: Job, loop: Loop, epoch: int, train: torch.Tensor, x_val: torch.Tensor
) -> tuple[EpochStats, bool]:
    """Validate, refuse a diverged loss, update early stopping and the history; (the epoch's
    stats, whether validation improved)."""
    kind, t, workers = job.kind, job.t, job.workers
    # validation always at the final KL weight: a loss measured with the warm-up's smaller
    # weight would look best early and pick that checkpoint
    val = evaluate_loss(loop.model, x_val, getattr(t, "beta", 0.0), 1024) if workers.main else (0.0, 0.0, 0.0)
    val = from_main(val, workers)
    train_loss, train_recon, train_kl = train.tolist()
    stats = EpochStats(epoch + 1, train_loss, train_recon, train_kl, *val, kl_weight(t, epoch))  # 1-based
    if not (math.isfinite(stats.train_loss) and math.isfinite(stats.val_loss)):
        raise UserError(
            f"training diverged in epoch {epoch + 1}: loss {stats.train_loss} "
            f"(validation {stats.val_loss}); lower train.{kind}.lr ({t.lr}) "
            "(the checkpoints hold the last finite epoch, if any)"
        )
    improved = stats.val_loss < loop.best_val
    loop.best_val = min(loop.best_val, stats.val_loss)
    # no early stopping while the KL weight still rises (as in the published code)
    warming_up = epoch + 1 < getattr(t, "kl_warmup_epochs", 0)
    loop.bad_epochs = 0 if improved or warming_up else loop.bad_epochs + 1
    stopped_early = bool(t.patience) and loop.bad_epochs >= t.patience
    loop.history.append({**asdict(stats), "stopped_early": stopped_early})
    return stats, improved


def tracked_metrics(stats: EpochStats, variational: bool) -> dict[str, float]:
    """The epoch's numbers under names that say what they are, so that one axis of MLflow's
    compare view means one thing: both models' reconstruction NLL (the AE's whole loss) and,
    for the VAE, its -ELBO (the KL term weighted by beta; the -ELBO itself at beta 1), KL and
    KL weight."""
    tracked = {"train/recon_nll": stats.train_recon, "val/recon_nll": stats.val_recon}
    if variational:
        tracked |= {
            "train/neg_elbo": stats.train_loss,
            "val/neg_elbo": stats.val_loss,
            "train/kl": stats.train_kl,
            "val/kl": stats.val_kl,
            "kl_weight": stats.beta,
        }
    return tracked


def record_epoch(
    mlrun,
    job: Job,
    loop: Loop,
    data: TrainingData,
    stats: EpochStats,
    improved: bool,
    rng: list[dict],
    timing: dict[str, float],
) -> None:
    """Rank 0: the epoch's metrics and timings to MLflow, best.pt when it improved, last.pt
    (recorded on the run for custody), and image series every `sample_every` epochs."""
    t, out_dir = job.t, job.out_dir
    mlrun.log_metrics(
        {**tracked_metrics(stats, job.kind == "vae"), "lr": loop.optimizer.param_groups[0]["lr"], **timing},
        step=stats.epoch,
    )
    if improved:
        save_checkpoint(
            out_dir / "best.pt",
            {"model": loop.model.state_dict(), "model_config": loop.model.config(), "epoch": stats.epoch},
        )
    save_checkpoint(
        out_dir / "last.pt",
        {
            "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "model_config": loop.model.config(),
            "rng": rng,
            "epoch": stats.epoch,
            "best_val": loop.best_val,
            "bad_epochs": loop.bad_epochs,
            "history": loop.history,
            "params": _flat(job.params, job.kind),
            "data_sha256": data.data_sha,
        },
    )
    mlrun.set_tags({custody.LAST_CHECKPOINT.tag: sha256_file(out_dir / "last.pt")})
    if stats.epoch % t.sample_every == 0 or stats.epoch == t.epochs or loop.stopped_early:
        log_images(mlrun, loop.model, data.x_val, stats.epoch - 1, t.seed)


def finish(mlrun, job: Job, loop: Loop, data: TrainingData, curves_path: Path) -> dict:
    """Rank 0: summary.json and the curves, best.pt on the run, and the digests that every
    later stage checks these files against (custody.py). Returns the summary."""
    history, out_dir = loop.history, job.out_dir
    summary = {
        "model": job.kind,
        "model_name": out_dir.name,  # two names never share these bytes, which DVC would swap
        "epochs_run": len(history),
        "best_val_loss": loop.best_val,
        "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1,
        "final_train_loss": history[-1]["train_loss"],
        "stopped_early": history[-1]["stopped_early"],
        "data_sha256": data.data_sha,
        "model_config": loop.model.config(),
        "binarize": job.t.binarize,
    }
    best_path = out_dir / "best.pt"
    mlrun.log_metrics({"best_val_loss": loop.best_val})
    write_json(out_dir / "summary.json", summary)
    write_json(curves_path, history)
    digests = {
        custody.CHECKPOINT.tag: sha256_file(best_path),
        custody.TRAINING_SUMMARY.tag: sha256_file(out_dir / "summary.json"),
        custody.CURVES.tag: sha256_file(curves_path),
    }
    model_id = mlrun.log_trained_model(
        out_dir.name,
        [best_path, out_dir / "summary.json"],
        {**summary["model_config"], "binarize": job.t.binarize, "data_sha256": data.data_sha},
        {"vaectl.kind": job.kind, custody.CHECKPOINT.tag: digests[custody.CHECKPOINT.tag]},
        {"best_val_loss": loop.best_val},
        mlrun.training_set,
    )
    mlrun.set_tags({**digests, custody.LOGGED_MODEL: model_id})
    return {**summary, "run_id": mlrun.run_id}


@contextlib.contextmanager
def _open_run(job: Job, data: TrainingData, run_id: str | None, resumed_with: dict):
    """Rank 0's MLflow run (a new one, or the one a resume continues), with its params,
    dataset and what a resume changed; the other processes get None."""
    from vaectl import tracking

    kind, out_dir = job.kind, job.out_dir
    if not job.workers.main:
        yield None
        return
    tags = {
        **tracking.standard_tags(kind, data.data_sha),
        "vaectl.kind": kind,
        custody.MODEL_NAME: out_dir.name,
    }
    with tracking.start_run(job.params.tracking.experiment, f"train-{out_dir.name}", tags, run_id) as mlrun:
        if resumed_with:  # MLflow params are immutable: say what changed
            mlrun.set_tags(
                {
                    "vaectl.resumed_with": "; ".join(
                        f"{k}: {old} -> {new}" for k, (old, new) in resumed_with.items()
                    )
                }
            )
        if run_id is None:
            # this model's settings under shared keys too (latent_dim, lr, ...), so that the
            # UI's compare view lines the VAE and AE runs up
            mlrun.log_params(
                {
                    **_flat(job.params, kind),
                    **flatten(job.t),
                    "kind": kind,
                    "device": job.device.type,
                    "threads": torch.get_num_threads(),
                    "processes": job.workers.world,
                }
            )
        # logged again on a resume: MLflow keeps one input per dataset; finish() needs it
        mlrun.training_set = mlrun.dataset(
            data.train_images, data.train_labels, *split_label(data.source.parent, "train")
        )
        mlrun.log_input(mlrun.training_set, context="training")
        yield mlrun


def _train(job: Job, prepared: Path, curves_path: Path, resume: bool) -> dict | None:
    t, workers = job.t, job.workers
    torch.manual_seed(t.seed + workers.rank)  # reparameterisation noise: one stream per process
    generator = torch.Generator(device=job.device).manual_seed(t.seed)  # data order: shared by all
    data = _load_data(job, prepared, generator)
    loop = _build_loop(job, generator)
    run_id: str | None = None
    resumed_with: dict = {}
    if resume:
        run_id, resumed_with = _resume(job, loop, data.data_sha)
    elif workers.main:  # the previous best.pt stays until this run has a better one
        job.out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        job.kind,
        steps_per_epoch(len(data.x_train), t.batch_size, workers.world),
        t.epochs,
        shows_kl=job.kind == "vae",
        live=workers.main,
    )
    stop = StopRequest()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _open_run(job, data, run_id, resumed_with) as mlrun:
            with peers_stopping_as_interrupt(workers, stop.event):
                _epochs(job, loop, data, progress, stop, mlrun)
            return finish(mlrun, job, loop, data, curves_path) if workers.main else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        progress.close()


def _epochs(job: Job, loop: Loop, data: TrainingData, progress: Progress, stop: StopRequest, mlrun) -> None:
    """Epochs from where `loop` stands until `epochs` or early stopping."""
    for epoch in range(loop.start_epoch, job.t.epochs):
        if loop.stopped_early:
            break
        began = time.perf_counter()
        train, n_used = run_epoch(job, loop, epoch, data.x_train, progress, stop)
        samples_per_s = n_used / (time.perf_counter() - began)
        stats, improved = close_epoch(job, loop, epoch, train, data.x_val)
        rng = _rng_state(loop.generator, job.device, job.workers)  # every process takes part
        if job.workers.main:
            record_epoch(
                mlrun,
                job,
                loop,
                data,
                stats,
                improved,
                rng,
                {"samples_per_s": samples_per_s, "epoch_time_s": time.perf_counter() - began},
            )
            progress.epoch(stats, samples_per_s)


def _flat(params: Params, kind: str) -> dict:
    """The params that shape this run: data, model and this model's train group."""
    return {
        **flatten(params.data, "data"),
        **flatten(params.model, "model"),
        **flatten(getattr(params.train, kind), f"train.{kind}"),
    }
