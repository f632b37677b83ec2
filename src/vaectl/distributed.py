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


RENDEZVOUS_TIMEOUT_S = 300  # how long the first host waits for the others


@dataclass(frozen=True)
class Launch:
    """How many training processes on this host (`--nproc`), on how many hosts (`--nodes`,
    each running the same command) and where the hosts meet (`--rendezvous HOST:PORT`, a
    free port on one of them: that host keeps the rendezvous store)."""

    nproc: int = 1
    nodes: int = 1
    rendezvous: str | None = None

    def __post_init__(self) -> None:
        if self.nodes > 1 and not self.rendezvous:
            raise UserError("--nodes N needs --rendezvous HOST:PORT, the same on every host")
        if self.rendezvous is not None and self.nodes == 1:
            raise UserError("--rendezvous is where several hosts meet: give --nodes N (N > 1) too")
        if self.rendezvous is not None:
            host, _, port = self.rendezvous.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise UserError(f"--rendezvous {self.rendezvous!r}: give HOST:PORT, a port from 1 to 65535")

    @property
    def world(self) -> int:
        return self.nproc * self.nodes

    def run_id(self, train_args: list[str]) -> str:
        """One id for the job on every host: from the command they all run (hosts that run
        different commands do not meet); a job on one host gets a fresh one."""
        if self.nodes == 1:
            import uuid

            return str(uuid.uuid4())
        import hashlib

        return "vaectl-" + hashlib.sha256(" ".join(train_args).encode()).hexdigest()[:16]


def address_towards(host: str) -> tuple[str, str | None, bool]:
    """This host's address on its route to `host`, the interface holding it (what the other
    hosts reach it by) and whether it is `host`. The host name may resolve to loopback (as in
    /etc/hosts on many machines), where the launcher's and gloo's own lookups would advertise
    127.0.0.1."""
    import fcntl
    import socket
    import struct

    try:
        target = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # sends nothing: it only picks the route
            address = probe.getsockname()[0]
            for _, name in socket.if_nameindex():
                with contextlib.suppress(OSError):  # SIOCGIFADDR: an interface's IPv4 address
                    asked = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                    if socket.inet_ntoa(asked[20:24]) == address:
                        return address, name, address == target
    except OSError as err:
        raise UserError(f"--rendezvous host {host!r} cannot be reached from here: {err}") from None
    return address, None, address == target


def launch(spec: Launch, train_args: list[str]) -> int:
    """`vaectl train --nproc N [--nodes M --rendezvous HOST:PORT]`: N processes of `vaectl
    train ARGS` on this host under PyTorch's elastic launcher (what torchrun runs), meeting
    the other hosts' at the rendezvous: failure handling, signal forwarding. Threads are split
    between this host's processes unless OMP_NUM_THREADS says otherwise. Returns the exit
    code: 0, 130 when interrupted, else 1 (the failed process has printed why)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.nproc)))
    local_addr, rendezvous = None, {"join_timeout": RENDEZVOUS_TIMEOUT_S}
    if spec.nodes > 1 and spec.rendezvous:
        local_addr, interface, hosting = address_towards(spec.rendezvous.rpartition(":")[0].strip("[]"))
        rendezvous["is_host"] = hosting  # torch's own test compares host names only
        if interface:  # gloo's own pick follows the host name, which may mean loopback
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we report failures
    config = LaunchConfig(
        min_nodes=spec.nodes,
        max_nodes=spec.nodes,
        nproc_per_node=spec.nproc,
        run_id=spec.run_id(train_args),
        rdzv_backend="c10d",
        rdzv_endpoint=spec.rendezvous or "localhost:0",
        rdzv_configs=rendezvous,
        max_restarts=0,
        local_addr=local_addr,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "vaectl", "train", *train_args)
    except SignalException:
        return 130
    except ChildFailedError as err:
        return 130 if any(f.exitcode == 130 for f in err.failures.values()) else 1
    except RendezvousError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"the {spec.nodes} hosts did not meet at {spec.rendezvous} (each waits up to "
            f"{RENDEZVOUS_TIMEOUT_S} s for the others): {reason}"
        ) from None
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
