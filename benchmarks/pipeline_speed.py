"""How long the pipeline takes and how much of the machine it uses: `vaectl repro` from a
fresh copy of the repository (no cache, no data, no MLflow store, as a fresh clone starts)
at each --jobs, one after the other, and whether every run wrote the same dvc.lock.

Per run: the wall time, the busy cores (CPU seconds of every process it started over the wall
time), and each stage's wall time as vaectl repro reports it. On --params tiny (the test
suite's configuration, seconds of work a stage) a stage's time is almost all fixed cost:
starting DVC, importing torch and mlflow, opening the store. With --workers, the last copy
then runs the stages with per-image work (evaluate, ood) again alone on each count of worker
processes (VAECTL_WORKERS): their wall time, and whether their reports kept their bytes.

    make bench   # or: python benchmarks/pipeline_speed.py --params default --jobs 1 2 --out F.json
    python benchmarks/pipeline_speed.py --params default --jobs 2 --workers 1 2 --out F.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from vaectl import environment

REPO = Path(__file__).resolve().parents[1]
STAGE_DONE = re.compile(r"^pipeline: \[\d+/\d+\] (\S+) done \((\d+) s\)$")
SHARDED = {  # the stages whose per-image work shards.py shares out, and the reports they write
    "evaluate": ("reports/metrics.json", "reports/summary.json", "reports/latents.json"),
    "ood": ("reports/ood.json",),
}


def fresh_copy(dest: Path, tiny: bool) -> dict:
    """The git-tracked tree without dvc.lock, committed in its own repository; its environment."""
    sys.path.insert(0, str(REPO))
    from tests.test_pipeline import deep_merge
    from tests.tiny import TINY_EVAL

    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in listed.stdout.split():
        if (REPO / name).is_file() and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    if tiny:
        full = yaml.safe_load((REPO / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(deep_merge(full, TINY_EVAL)))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VAECTL_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(dest / "src")  # the copy's own code
    env |= {f"GIT_{who}_{what}": "bench" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=dest, env=env, check=True)
    return env


def measure_workers(root: Path, env: dict, counts: list[int]) -> dict:
    """{stage: [{workers, wall_s, reports_sha256}]}: each sharded stage's command (as dvc.yaml
    gives it) run again in the up-to-date copy at `root` on each count of worker processes."""
    commands = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    found: dict[str, list] = {}
    for stage, reports in SHARDED.items():
        for workers in counts:
            start = time.perf_counter()
            done = subprocess.run(
                shlex.split(commands[stage]["cmd"]),
                cwd=root,
                env={**env, "VAECTL_WORKERS": str(workers)},
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            if done.returncode:
                sys.exit(f"{stage} on {workers} workers failed:\n{done.stderr[-3000:]}")
            digest = hashlib.sha256(b"".join((root / name).read_bytes() for name in reports)).hexdigest()
            found.setdefault(stage, []).append(
                {"workers": workers, "wall_s": round(wall, 1), "reports_sha256": digest}
            )
            print(f"{stage} on {workers} workers: {wall:.0f} s", flush=True)
    return found


def measure(jobs: int, tiny: bool, workers: list[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="vaectl-bench-") as tmp:
        env = fresh_copy(Path(tmp), tiny)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            ["vaectl", "repro", "--jobs", str(jobs)], cwd=tmp, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            sys.exit(f"vaectl repro --jobs {jobs} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        stages = dict(m.groups() for m in map(STAGE_DONE.match, done.stdout.splitlines()) if m)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        sharded = measure_workers(Path(tmp), env, workers) if workers else {}
        return {
            "jobs": jobs,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "busy_cores": round(cpu / wall, 2),
            "stages_s": {name: int(s) for name, s in stages.items()},
            # its entries, not its bytes: a new lock lists the stages in the order they finished
            "dvc_lock_sha256": hashlib.sha256(
                json.dumps(yaml.safe_load((Path(tmp) / "dvc.lock").read_text()), sort_keys=True).encode()
            ).hexdigest(),
            **({"sharded_stages": sharded} if sharded else {}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[], help="then evaluate and ood on these counts"
    )
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    runs = []
    for i, jobs in enumerate(args.jobs):
        runs.append(measure(jobs, args.params == "tiny", args.workers if i == len(args.jobs) - 1 else []))
        r = runs[-1]
        print(f"--jobs {jobs}: {r['wall_s']:.0f} s, {r['busy_cores']:.2f} cores busy", flush=True)
        print(f"  stages (s): {r['stages_s']}", flush=True)
    base = runs[0]
    for r in runs[1:]:
        print(f"--jobs {r['jobs']} against --jobs {base['jobs']}: {base['wall_s'] / r['wall_s']:.2f}x faster")
    same = len({r["dvc_lock_sha256"] for r in runs}) == 1
    print(f"the same dvc.lock at every --jobs: {'yes' if same else 'NO'}")
    same_reports = {
        stage: len({f["reports_sha256"] for f in found}) == 1
        for stage, found in runs[-1].get("sharded_stages", {}).items()
    }
    for stage, alike in same_reports.items():
        print(f"{stage}: the same reports on every worker count: {'yes' if alike else 'NO'}")
    result = {
        "params": args.params,
        "cpu": environment.cpu()[0],
        "cores": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "same_dvc_lock": same,
        **({"same_reports_on_every_worker_count": same_reports} if same_reports else {}),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not same or not all(same_reports.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
