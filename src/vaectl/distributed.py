"""Several training processes: device choice, joining torchrun's process group, launching N
processes of `vaectl train`, and the few collectives the training loop needs. One process
(the default) never imports torch.distributed."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vaectl import UserError


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes; torchrun's env vars say it."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher (torchrun, or `vaectl train --nproc`'s) started this process."""
    return "WORLD_SIZE" in os.environ


def join_workers(requested_device: str) -> tuple[Workers, torch.device]:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, nccl on CUDA
    with one GPU per process. Alone, just pick the device."""
    device = pick_device(requested_device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Workers(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Workers(dist.get_rank(), world), device


def leave(workers: Workers) -> None:
    if workers.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def check_gpus(requested_device: str, nproc: int) -> None:
    """nccl wants one GPU per process."""
    if pick_device(requested_device).type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {nproc} on CUDA needs {nproc} GPUs, this machine has "
            f"{torch.cuda.device_count()}; set train.device: cpu to run "
            f"{nproc} processes on the CPU"
        )


def launch(nproc: int, train_args: list[str]) -> int:
    """`vaectl train --nproc N`: N processes of `vaectl train ARGS` under PyTorch's elastic
    launcher (what torchrun runs): rendezvous, failure handling, signal forwarding. Threads
    are split between processes unless OMP_NUM_THREADS says otherwise. Returns the exit
    code: 0, 130 when interrupted, else 1 (the failed process has printed why)."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we report failures
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "vaectl", "train", *train_args)
    except SignalException:
        return 130
    except ChildFailedError as err:
        return 130 if any(f.exitcode == 130 for f in err.failures.values()) else 1
    return 0


PEER_STOP_GRACE_S = 3.0


@contextlib.contextmanager
def peers_stopping_as_interrupt(workers: Workers, stop_requested: threading.Event) -> Iterator[None]:
    """On Ctrl-C or SIGTERM the launcher signals every process at once; one waiting in a
    collective can see its stopped peer's closed connection before its own stop request.
    A failed collective waits a moment for that request, so the stop ends as an interrupt
    (run KILLED, exit 130, no traceback); a real failure is re-raised after it."""
    try:
        yield
    except RuntimeError:
        if workers.world > 1 and stop_requested.wait(PEER_STOP_GRACE_S):
            raise KeyboardInterrupt from None
        raise


def sum_over_workers(values: torch.Tensor, workers: Workers) -> torch.Tensor:
    if workers.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def from_main(values: tuple, workers: Workers) -> tuple:
    """Rank 0's values on every process, so that all take the same decisions."""
    if workers.world == 1:
        return values
    import torch.distributed as dist

    box = [values]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: object, workers: Workers) -> list:
    """Every process's `value`, indexed by rank."""
    if workers.world == 1:
        return [value]
    import torch.distributed as dist

    values: list = [None] * workers.world
    dist.all_gather_object(values, value)
    return values
