"""Per-image work (the IW-NLL, the ELBO's draws, the OOD scores) split over worker processes
without changing a byte of what one process computes.

The work is cut at the batches the single process uses, so every matrix multiply sees the
same rows; each worker computes on the same pinned numerics (inherited environment, the same
thread count). The random draws are keyed to the batch: a batch starts from the generator
state that the sequential pass reaches at it, found by making and dropping the draws of the
batches before it (`states_at_batches`, ~0.06 s a default batch against ~10 s of decoding). So the
bytes are those of the sequential pass, for any number of workers; the committed results, made
before there were workers, keep theirs. tests/test_evaluate.py and tests/test_novelty.py
compare 1, 2 and 3 workers.

How many: `VAECTL_WORKERS` when set (`vaectl repro` and `vaectl study` set it to share the
cores among the stages they run at once), else one a core for the torch threads in use.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vaectl import UserError

WORKERS_ENV = "VAECTL_WORKERS"
MAX_WORKERS = 64


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def one_a_core(threads: int) -> int:
    """Processes to run side by side when each computes on `threads` torch threads (0: torch's
    default, every core, so one process)."""
    return max(1, cores() // threads) if threads else 1


def worker_count(threads: int) -> int:
    """Processes for per-image work: VAECTL_WORKERS, else one a core (`one_a_core`)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return one_a_core(threads)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise UserError(
            f"{WORKERS_ENV}={raw!r}: expected a whole number of processes from 1 to {MAX_WORKERS}"
        )
    return int(raw)


# A spawned worker takes a few seconds to start (it imports torch and is sent the model and
# the images): measured on 2 cores, ood's 290k decodes (~10 s) took 3 s longer on 2 workers,
# evaluate's 2.55M took 40 s less (docs/benchmarks/stage_workers_default.json).
DECODES_PER_WORKER = 500_000  # ~15 s of one core on the default MLP


def useful_workers(workers: int, decodes: int) -> int:
    """At most `workers`, and no more than leave each at least DECODES_PER_WORKER decodes."""
    return max(1, min(workers, decodes // DECODES_PER_WORKER))


def states_at_batches(
    generators: Sequence, draws: Callable[[int], Sequence], sizes: Sequence[int], dtype
) -> list:
    """[[each generator's state] at the start of each batch], as the sequential pass reaches
    them: `draws(batch size)` lists, per generator, the shapes of the standard-normal draws one
    batch makes, in order. The generators are left where the sequential pass leaves them."""
    import torch

    states = []
    for size in sizes:
        states.append([g.get_state() for g in generators])
        for generator, shapes in zip(generators, draws(size), strict=True):
            for shape in shapes:
                torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    return states


_SHARED: dict = {}


def _start_worker(threads: int, shared) -> None:
    """A worker: dies with its parent (Linux), computes on the parent's thread count."""
    import ctypes
    import signal

    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    import torch

    torch.set_num_threads(threads)
    _SHARED["shared"] = shared


def _work(task: Callable, item):
    return task(_SHARED["shared"], item)


def _terminate(pool) -> None:
    """Stop a pool's workers now, not after the batch in hand (Python 3.14's
    `pool.terminate_workers()` does this)."""
    for process in dict(getattr(pool, "_processes", None) or {}).values():
        process.terminate()


@contextlib.contextmanager
def _this_code_first():
    """A spawned worker imports with this process's sys.path: put the folder this process's
    vaectl came from first while workers start, so that they run the same code even when
    something has put another copy in front since (MLflow does, loading a model's code)."""
    import vaectl

    saved = list(sys.path)
    sys.path.insert(0, str(Path(vaectl.__file__).resolve().parents[1]))
    try:
        yield
    finally:
        sys.path[:] = saved


def map_items(task: Callable, shared, items: Sequence, workers: int, progress=lambda done: None) -> list:
    """[task(shared, item) for item in items], in order, on up to `workers` spawned processes
    (each given `shared` once); in this process when one worker or one item is asked for.
    `task` must be a module-level function; `progress(items done)` follows the results."""
    if workers <= 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(task(shared, item))
            progress(len(results))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import torch

    pool = ProcessPoolExecutor(
        min(workers, len(items)),
        mp_context=multiprocessing.get_context("spawn"),  # fork would copy torch's thread pools
        initializer=_start_worker,
        initargs=(torch.get_num_threads(), shared),
    )
    try:
        with _this_code_first():  # the workers start here, with this sys.path
            futures = [pool.submit(_work, task, item) for item in items]
        results = []
        for future in futures:
            results.append(future.result())
            progress(len(results))
        return results
    except BrokenProcessPool:
        _terminate(pool)
        raise UserError(
            f"a worker process died (killed, or out of memory); {WORKERS_ENV}=1 computes in this process"
        ) from None
    except BaseException:  # Ctrl-C, SIGTERM, a worker's error
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
