"""Screenshots of what users see, in headless Chromium, after `make repro` (and `make
quickstart`, whose runs one shot lists): the train-vae run at the URL MLflow prints for it
(the training view, its logged model), the experiment's Models tab with each model's test
metrics, the runs of DVC experiment `quickstart`, the compare view of train-vae vs train-ae,
the evaluate run (params, metrics, its artifacts), the registered VAE version (its Source Run
the training run), and reports/index.html and `dvc plots show`'s page rendered with the
network cut off (every request goes to a dead proxy, so anything a page fetched would be
missing).

    apt-get install -y chromium-headless-shell   # or chromium
    python benchmarks/screenshots.py [--out docs/screenshots]

It serves this repo's MLflow store (mlflow.db, artifacts in mlruns/) on a free loopback port
for the shots and stops it afterwards. Each shot is checked for being more than a blank page
(at least a few distinct colours) and, in the page Chromium rendered, for an empty preview
and for what it is for (the comparison's text, Vega's drawn marks); the script exits
non-zero if one fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return name
    sys.exit("no headless Chromium found: apt-get install -y chromium-headless-shell")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# what a page shows when the part a shot is for did not render (MLflow 3.17's artifact view
# when its URL selects no file)
EMPTY_MARKS = ("Select a file to preview",)


def chromium(url: str, size: tuple[int, int], offline: bool, *action: str) -> str:
    """Headless Chromium on `url` with JavaScript given 20 s of virtual time; its stdout."""
    with tempfile.TemporaryDirectory(prefix="vaectl-chromium-") as profile:
        args = [
            browser(),
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=20000",
            *action,
        ]
        if offline:  # every network request goes to a closed port: nothing can be fetched
            args += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
        return subprocess.run([*args, url], check=True, capture_output=True, timeout=120, text=True).stdout


def shoot(
    url: str, dest: Path, size: tuple[int, int], offline: bool = False, shows: tuple[str, ...] = ()
) -> None:
    """One screenshot, refused (exit 1) when it is blank (few colours), when the rendered page
    shows an empty preview (EMPTY_MARKS), or when it lacks any of `shows` (the markup the
    shot is for: a file's text, a drawn chart)."""
    chromium(url, size, offline, f"--screenshot={dest}")
    colours = len(np.unique(np.asarray(Image.open(dest).convert("RGB")).reshape(-1, 3), axis=0))
    if colours < 20:
        sys.exit(f"{dest.name}: the page rendered blank ({colours} colours): {url}")
    dom = chromium(url, size, offline, "--dump-dom")
    empty = [mark for mark in EMPTY_MARKS if mark in dom]
    missing = [text for text in shows if text not in dom]
    if empty:
        sys.exit(f"{dest.name}: the page shows {empty[0]!r}: {url}")
    if missing:
        sys.exit(f"{dest.name}: no {missing[0]!r} in the rendered page: {url}")
    print(f"{dest}: {url} ({colours} colours)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--experiment", default="vaectl")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from vaectl import tracking

    report = ROOT / "reports" / "index.html"
    if not (ROOT / "mlflow.db").exists() or not report.exists():
        sys.exit("run `make repro` first: no mlflow.db or reports/index.html")
    runs = {}
    for run in tracking.find_runs(args.experiment):  # newest first: the latest of each name
        if "dvc.exp_name" not in run.data.tags:  # the workspace pipeline's, not an experiment's
            runs.setdefault(run.info.run_name, run)
    missing = [n for n in ("train-vae", "train-ae", "evaluate") if n not in runs]
    if missing:
        sys.exit(f"no {', '.join(missing)} run in experiment {args.experiment}: run `make repro` first")
    experiment_id = runs["evaluate"].info.experiment_id
    name = json.loads((ROOT / "reports" / "registry.json").read_text())["vae"]["name"]
    registered = {
        "name": name,
        "version": tracking.client().get_model_version_by_alias(name, "candidate").version,
    }

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            tracking.default_tracking_uri(),
            "--default-artifact-root",
            (ROOT / "mlruns" / "artifacts").as_uri(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            sys.exit("the MLflow UI did not come up in 120 s")
        args.out.mkdir(parents=True, exist_ok=True)
        pair = json.dumps([runs["train-vae"].info.run_id, runs["train-ae"].info.run_id])
        experiment = f"{base}/#/experiments/{experiment_id}"
        evaluate = f"{experiment}/runs/{runs['evaluate'].info.run_id}"
        quickstart = urllib.parse.quote("tags.`dvc.exp_name` = 'quickstart'")
        shots = {  # the training view (TRAINING_VIEW) is what the links vaectl prints open
            "training_run.png": (
                tracking.run_link(experiment_id, runs["train-vae"].info.run_id, base),
                (1400, 1600),
            ),
            "models_tab.png": (f"{experiment}/models", (2400, 700)),
            "experiment_runs.png": (f"{experiment}/runs?searchFilter={quickstart}", (1600, 700)),
            "compare_train_runs.png": (
                f'{base}/#/compare-runs?runs={pair}&experiments=["{experiment_id}"]',
                (1400, 1400),
            ),
            "evaluate_run.png": (evaluate, (1400, 2600)),
            "evaluate_run_artifacts.png": (f"{evaluate}/artifacts/comparison.md", (1400, 1000)),
            "model_version.png": (
                f"{base}/#/models/{registered['name']}/versions/{registered['version']}",
                (1400, 1200),
            ),
        }
        view = tracking.TRAINING_VIEW
        for name, (url, size) in shots.items():
            if view not in url:
                shots[name] = (url + ("&" if "?" in url.split("#")[-1] else "?") + view, size)
        shows = {"evaluate_run_artifacts.png": ("VAE vs AE on",)}  # the file's text, previewed
        for name, (url, size) in shots.items():
            shoot(url, args.out / name, size, shows=shows.get(name, ()))
    finally:
        server.terminate()
        server.wait(timeout=30)
    shoot(report.as_uri(), args.out / "report_offline.png", (1200, 1600), offline=True)
    with tempfile.TemporaryDirectory(prefix="vaectl-plots-") as plots:  # Vega drawn offline
        subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", plots], cwd=ROOT, check=True)
        page = (Path(plots) / "index.html").as_uri()
        shoot(page, args.out / "dvc_plots_offline.png", (1600, 1000), offline=True, shows=('class="marks"',))


if __name__ == "__main__":
    main()
