"""`vaectl repro`: `dvc repro` with the stages that do not wait for each other run side by
side, one `dvc repro --single-item STAGE` process each.

DVC itself makes this safe, so nothing here bypasses dvc.lock: while a stage's command runs,
`dvc repro` releases the repository lock and holds per-path locks on the stage's deps (read)
and outs (write) instead; `--wait-for-lock` makes each process queue for the short moments it
needs the repository (checking a stage, writing its dvc.lock entry, which it merges into the
file as it finds it). Each stage computes in its own process on the pinned numerics, so the
bytes do not depend on how many run at once (tests/test_pipeline.py compares 1 and 2 jobs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vaectl import UserError
from vaectl.shards import WORKERS_ENV, one_a_core


def share_cores(jobs: int, threads: int) -> None:
    """Give each of `jobs` processes run side by side its share of the cores for its
    per-image work (shards.py), unless the user set VAECTL_WORKERS: the processes they start
    inherit it."""
    os.environ.setdefault(WORKERS_ENV, str(max(1, one_a_core(threads) // jobs)))


def dvc_env() -> dict[str, str]:
    """This environment with this interpreter's scripts first on PATH: the `dvc` it runs, and
    the `vaectl` of the stages DVC runs, are this venv's even where it is not activated."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc(*args: str, env: dict | None = None, timeout_s: float | None = None) -> str:
    """`dvc ARGS`' stdout (the `dvc` first on env's PATH; dvc_env() by default); a failure, or
    no answer within `timeout_s`, is one line."""
    try:
        result = subprocess.run(
            ["dvc", *args], capture_output=True, text=True, env=env or dvc_env(), timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"`dvc {' '.join(args[:3])}` did not answer in {timeout_s:g} s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        # DVC ends its errors with a support banner; the ERROR: line is the one that says why
        reason = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise UserError(f"`dvc {' '.join(args[:3])}` failed: {reason or result.returncode}")
    return result.stdout


REMOTE_PROBE_TIMEOUT_S = 10.0
BUCKET_PROTOCOLS = ("s3", "gs", "azure", "oss")  # remotes whose first path part is a bucket


def remote_summary(root: Path) -> tuple[str, bool]:
    """One line on the DVC remote `dvc push` and `dvc pull` would use (`vaectl doctor`): its
    name, where it is and whether it answers within REMOTE_PROBE_TIMEOUT_S; and whether
    that is a problem (no remote set is not: a fresh clone has none)."""
    import concurrent.futures

    from dvc.config import NoRemoteError
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from vaectl.tracking import masked

    where = "the default remote"
    try:
        with Repo(str(root)) as repo:
            remote = repo.cloud.get_remote()
            where = f"{remote.name} -> {masked(repo.config['remote'][remote.name]['url'])}"
            probe = concurrent.futures.ThreadPoolExecutor(1)
            try:
                there = probe.submit(remote_state, remote).result(REMOTE_PROBE_TIMEOUT_S)
            finally:
                probe.shutdown(wait=False)
    except NotDvcRepoError:
        return f"none: {root} is not in a DVC project", False
    except NoRemoteError:
        return "none set (`make remote` makes a local one; `dvc push` has nowhere to go)", False
    except concurrent.futures.TimeoutError:
        return f"{where}: no answer within {REMOTE_PROBE_TIMEOUT_S:g} s", True
    except Exception as err:  # noqa: BLE001 - DVC's or the remote's own failure, in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return f"{where}: {reason}", True
    if there == "no bucket":
        return f"{where}: its bucket does not exist (`dvc push` does not make one; make it first)", True
    return f"{where}: {'answers' if there == 'there' else 'not there yet (`dvc push` creates it)'}", False


def remote_state(remote) -> str:
    """Whether the remote is "there", "missing" (`dvc push` makes the folder) or, for an
    object store, has "no bucket" (which `dvc push` does not make). Listing the bucket
    raises on keys the store refuses, where `exists` would only say False."""
    if remote.fs.protocol in BUCKET_PROTOCOLS:
        try:
            remote.fs.fs.ls(remote.path.split("/")[0])
        except FileNotFoundError:
            return "no bucket"
    return "there" if remote.fs.exists(remote.path) else "missing"


def stale_stages(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """The stages `dvc status` finds changed and every stage downstream of them, with the
    stages among them that each must wait for. Listed in the order to start them when several
    are ready: most stages downstream first (evaluate before the 2-D models: export and
    register wait for it), then dvc.yaml's order."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:  # not a DVC project, a dvc.yaml DVC cannot read, another DVC holding the lock
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
            order = [stage.name for stage in repo.index.stages]  # dvc.yaml's names (addressing is cwd's)
            upstream = {a.name: {b.name for b in graph.successors(a)} for a in graph.nodes}
            downstream = {a.name: {b.name for b in nx.ancestors(graph, a)} for a in graph.nodes}
            named = {stage.addressing: stage.name for stage in repo.index.stages}
            changed = {named[key] for key in repo.status() if key in named}
    except DvcException as err:
        raise UserError(f"vaectl repro: {err}") from None
    stale = changed.union(*(downstream[name] for name in changed))
    todo = sorted(stale, key=lambda name: (-len(downstream[name]), order.index(name)))
    return todo, {name: upstream[name] & stale for name in todo}


def _relay(name: str, proc: subprocess.Popen, echo: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        echo(f"{name}: {line.rstrip()}")


def _start(name: str, root: Path, echo: Callable[[str], None]) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["dvc", "--wait-for-lock", "repro", "--single-item", name],
        cwd=root,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=_relay, args=(name, proc, echo), daemon=True).start()
    return proc


def _ended(running: dict[str, tuple[subprocess.Popen, float]]) -> list[tuple[str, bool, float]]:
    """The stages whose process has ended, taken out of `running`: (name, succeeded, seconds)."""
    ended = []
    for name, (proc, began) in list(running.items()):
        if proc.poll() is not None:
            del running[name]
            ended.append((name, proc.returncode == 0, time.monotonic() - began))
    return ended


def reproduce(root: Path, jobs: int, echo: Callable[[str], None] = print) -> dict:
    """Bring every stage of the pipeline at `root` up to date, up to `jobs` at once; a stage
    starts once the stale stages it depends on are done. After a failure no stage starts, the
    running ones finish (their dvc.lock entries are kept) and the failure is an error naming
    the stage. Returns {'stages': [names run, in the order they finished], 'wall_s', 'busy_s'}."""
    todo, needs = stale_stages(root)
    if not todo:
        echo("pipeline: every stage is up to date")
        return {"stages": [], "wall_s": 0.0, "busy_s": 0.0}
    total = len(todo)
    echo(f"pipeline: {total} stages to run, up to {jobs} at once: {', '.join(todo)}")
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished: list[str] = []
    failed: list[str] = []
    start, busy = time.monotonic(), 0.0
    try:
        while (todo and not failed) or running:
            ready = [s for s in todo if not needs[s] - set(finished)]
            for name in ready[: max(0, jobs - len(running))] if not failed else []:
                todo.remove(name)
                running[name] = (_start(name, root, echo), time.monotonic())
            time.sleep(0.2)
            for name, succeeded, seconds in _ended(running):
                busy += seconds
                (finished if succeeded else failed).append(name)
                if succeeded:
                    echo(f"pipeline: [{len(finished)}/{total}] {name} done ({seconds:.0f} s)")
    finally:
        for proc, _ in running.values():  # interrupted: each DVC stops its stage's command
            proc.terminate()
        for proc, _ in running.values():
            proc.wait()
    if failed:
        raise UserError(
            f"stage {failed[0]} failed (its output is above, each line starting '{failed[0]}: '); "
            f"{len(finished)} stages finished and are in dvc.lock, {len(todo)} did not start"
        )
    return {"stages": finished, "wall_s": time.monotonic() - start, "busy_s": busy}
