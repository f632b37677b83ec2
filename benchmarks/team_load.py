"""The team server under load: N clients at once (processes, as N team members' `vaectl
train` would be) each log a training run to the team stack's MLflow server (PostgreSQL +
SeaweedFS): per epoch one log_metrics call with the curve's five metrics, then an artifact.
Then it counts what landed (runs, metric points, artifacts: none may be lost) and reports
each request's latency (p50, p95, max). Loopback only; bounded: at most 16 clients and 500
epochs.

    python benchmarks/team_load.py --clients 8 --epochs 50    # starts (and stops) a stack
    python benchmarks/team_load.py --running                  # VAECTL_TEAM_* name a running one
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from vaectl import team, tracking  # noqa: E402

EXPERIMENT = "team-load"
METRICS = ("train_loss", "val_loss", "recon", "kl", "epoch_seconds")
MAX_CLIENTS, MAX_EPOCHS = 16, 500


def client(index: int, epochs: int, start_at: float, out: Path) -> None:
    """One member's training run, every request timed; starts at `start_at` with the others."""
    time.sleep(max(0.0, start_at - time.time()))
    latencies, began = [], time.perf_counter()
    with tracking.start_run(EXPERIMENT, f"client-{index}", {"vaectl.kind": "load"}) as run:
        latencies.append(time.perf_counter() - began)
        for epoch in range(epochs):
            values = {name: float(index * 1000 + epoch + i / 10) for i, name in enumerate(METRICS)}
            sent = time.perf_counter()
            run.log_metrics(values, step=epoch)
            latencies.append(time.perf_counter() - sent)
        sent = time.perf_counter()
        run.log_text(json.dumps({"client": index, "epochs": epochs}), "curves.json")
        latencies.append(time.perf_counter() - sent)
    out.write_text(json.dumps({"run_id": run.run_id, "latencies_s": latencies}))


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count < 65535 and all(port_free(first + i) for i in range(count)):
            return first
    raise SystemExit(f"no {count} consecutive free ports")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def stack_env(home: Path) -> dict[str, str]:
    base = free_ports(3 + len(team.WEED_PORTS))
    return {
        "VAECTL_TEAM_DIR": str(home / "state"),
        "VAECTL_TEAM_PG_PORT": str(base),
        "VAECTL_TEAM_S3_PORT": str(base + 1),
        "VAECTL_TEAM_MLFLOW_PORT": str(base + 2),
        "VAECTL_TEAM_WEED_PORT": str(base + 3),
    }


def run_clients(uri: str, clients: int, epochs: int, work: Path) -> list[dict]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, VAECTL_ROOT=str(work))
    start_at = time.time() + 8.0  # every client imported and connected before the first request
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", str(i), "--epochs", str(epochs)]
            + ["--start-at", repr(start_at), "--out", str(work / f"client-{i}.json")],
            env=env,
            cwd=work,
        )
        for i in range(clients)
    ]
    failed = [i for i, p in enumerate(procs) if p.wait(timeout=600) != 0]
    if failed:
        raise SystemExit(f"clients {failed} failed")
    return [json.loads((work / f"client-{i}.json").read_text()) for i in range(clients)]


def landed(results: list[dict], epochs: int) -> dict:
    """What the server holds of each client's run: its status, its metric points, its artifact."""
    lost_points, unfinished, missing_artifacts = 0, 0, 0
    mlflow_client = tracking.client()
    for result in results:
        run = mlflow_client.get_run(result["run_id"])
        unfinished += run.info.status != "FINISHED"
        for name in METRICS:
            lost_points += epochs - len(mlflow_client.get_metric_history(result["run_id"], name))
        missing_artifacts += "curves.json" not in [
            f.path for f in mlflow_client.list_artifacts(result["run_id"])
        ]
    runs = tracking.find_runs(EXPERIMENT)
    return {
        "runs_lost": len(results) - len({r.info.run_id for r in runs} & {r["run_id"] for r in results}),
        "runs_not_finished": unfinished,
        "metric_points_lost": lost_points,
        "artifacts_lost": missing_artifacts,
    }


def measure(uri: str, clients: int, epochs: int, work: Path) -> dict:
    os.environ.update(MLFLOW_TRACKING_URI=uri, VAECTL_ROOT=str(work))
    began = time.perf_counter()
    results = run_clients(uri, clients, epochs, work)
    wall = time.perf_counter() - began
    latencies = np.concatenate([r["latencies_s"] for r in results]) * 1000
    return {
        "clients": clients,
        "epochs": epochs,
        "requests": int(latencies.size),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p95": round(float(np.percentile(latencies, 95)), 1),
            "max": round(float(latencies.max()), 1),
        },
        "wall_s_including_start": round(wall, 1),
        **landed(results, epochs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--running", action="store_true", help="use the stack VAECTL_TEAM_* name")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.epochs <= MAX_EPOCHS):
        raise SystemExit(f"--clients 1..{MAX_CLIENTS} and --epochs 1..{MAX_EPOCHS}")
    if args.client is not None:
        client(args.client, args.epochs, args.start_at, args.out)
        return
    home = Path(tempfile.mkdtemp(prefix="vaectl-team-load-"))
    home.chmod(0o755)  # PostgreSQL's account enters it
    env = dict(os.environ) if args.running else {**os.environ, **stack_env(home)}
    settings = team.settings(env, home)
    try:
        if not args.running:
            team.up(settings, env, home, echo=lambda line: None)
        report = measure(settings.tracking_uri, args.clients, args.epochs, home)
    finally:
        if not args.running:
            team.down(settings, echo=lambda line: None)
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
