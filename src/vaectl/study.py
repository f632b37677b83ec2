"""`vaectl study`: the VAE-vs-AE comparison across beta and latent size, each setting trained
with several seeds, so that a claim about the latent space rests on more than one model.

Not a pipeline stage: it drives DVC experiments. Each trial is `dvc exp run --queue` of the
pipeline up to `evaluate` with its params (`-S`), run one at a time by `dvc queue start`
(both cores to one trial); DVC's run cache restores whatever an earlier trial or `dvc repro`
already trained. Each trial evaluates with its own seed (`eval.seed` = the
training seed). It then reads every trial's metrics.json back from its experiment commit
and summarises each setting across its seeds: the mean and a 95% interval that carries both
the seeds' spread and each trial's evaluation error (`vaectl.inference`), each comparison's
verdict (better / worse / equivalent within its declared margin / inconclusive), and how
many seeds' own verdicts went each way.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaectl import UserError, inference
from vaectl.files import atomic_path, only_files, write_json
from vaectl.inference import Estimate
from vaectl.metric_table import MEASURES, RELATIVE_5, measure
from vaectl.params import Params
from vaectl.pipeline import dvc
from vaectl.report import LEVEL, VERDICT_WORDS, flatten_model_metrics

# (column, what it is) for the table: comparisons are VAE/AE ratios, VAE - AE differences
# (with the comparison's verdict) or both models' values
TABLE = (
    ("vae.iw_nll", "VAE IW-NLL (nats)"),
    ("vae.neg_elbo", "VAE −ELBO"),
    ("vae.active_units", "VAE active units"),
    ("recon_bce.vae", "VAE recon BCE"),
    ("recon_bce.ae", "AE recon BCE"),
    ("recon_bce.ratio", "recon BCE VAE/AE"),
    ("diff_class.ppl_normalized.ratio", "PPL/d² VAE/AE (diff. class)"),
    ("same_class.ppl_normalized.ratio", "PPL/d² VAE/AE (same class)"),
    ("diff_class.path_length_ratio.ratio", "path-length VAE/AE (diff. class)"),
    ("samples.unrecognised.vae", "VAE samples unrecognised"),
    ("samples.unrecognised.ae", "AE samples (fitted Gaussian) unrecognised"),
    ("samples.unrecognised.difference", "unrecognised VAE − AE (fitted Gaussian)"),
    ("standard_normal.unrecognised.ae", "AE N(0, I) samples unrecognised"),
    ("standard_normal.unrecognised.difference", "unrecognised VAE − AE N(0, I)"),
)
VERDICT_PARTS = (".ratio", ".difference")  # the columns that carry their comparison's verdict


@dataclass(frozen=True)
class Trial:
    """One training seed of one grid setting: a DVC experiment."""

    beta: float
    latent_dim: int
    seed: int

    @property
    def setting(self) -> tuple[float, int]:
        return (self.beta, self.latent_dim)

    @property
    def name(self) -> str:
        return f"study-b{self.beta:g}-z{self.latent_dim}-s{self.seed}"

    def overrides(self, iw_samples: int) -> list[str]:
        """`-S` values: the VAE and its AE baseline share latent size and seed, and the seed
        is also the evaluation's (test binarisation, pairs, samples), so that evaluation
        noise varies between trials instead of being shared by all."""
        return [
            f"train.vae.beta={self.beta!r}",
            f"train.vae.latent_dim={self.latent_dim}",
            f"train.ae.latent_dim={self.latent_dim}",
            f"train.vae.seed={self.seed}",
            f"train.ae.seed={self.seed}",
            f"eval.seed={self.seed}",
            f"eval.iw_samples={iw_samples}",
        ]


def trials(params: Params) -> list[Trial]:
    """The beta sweep at params.yaml's latent size, then the latent sweep at its beta (the
    shared point once), each with every seed."""
    base_beta, base_dim = params.train.vae.beta, params.train.vae.latent_dim
    settings = [(b, base_dim) for b in params.study.betas]
    settings += [(base_beta, d) for d in params.study.latent_dims if (base_beta, d) not in settings]
    return [Trial(b, d, s) for b, d in settings for s in params.study.seeds]


def trial_estimates(metrics: dict) -> dict[str, tuple[float, str, Estimate]]:
    """One trial's metrics.json -> {key: (value, scale, estimate with its evaluation error)}:
    the VAE's own numbers ('vae.iw_nll', with evaluate's interval where it has one) and each
    comparison's 'NAME.vae', 'NAME.ae', 'NAME.difference' and 'NAME.ratio' (where the ratio
    and its interval are positive). Shares go on the logit scale, ratios on the log scale."""
    found: dict[str, tuple[str, float, list | None, int]] = {}
    intervals = metrics.get("vae_intervals", {})
    for k, v in flatten_model_metrics(metrics["vae"]).items():
        if isinstance(v, int | float) and k not in metrics["comparison"]:  # those are NAME.vae
            found[f"vae.{k}"] = ("identity", v, intervals.get(k), 0)
    for name, c in metrics["comparison"].items():
        share = measure(name).unit == "share"
        for part, units in zip(("vae", "ae"), c["units"], strict=True):
            found[f"{name}.{part}"] = ("logit" if share else "identity", c[part], c[f"{part}_ci"], units)
        found[f"{name}.difference"] = ("identity", c["difference"], c["difference_ci"], 0)
        if c["ratio"] is not None and c["ratio"] > 0 and c["ratio_ci"][0] > 0:
            found[f"{name}.ratio"] = ("log", c["ratio"], c["ratio_ci"], 0)
    return {
        key: (float(value), scale, inference.estimate(scale, value, ci, units))
        for key, (scale, value, ci, units) in found.items()
    }


def seed_interval(values: list[float]) -> list[float]:
    """The Student-t LEVEL interval of the mean of per-seed values (n >= 2): the seeds'
    spread alone, `inference.interval` with no evaluation error."""
    return inference.interval("identity", [Estimate(float(v), 0.0) for v in values])


def summarise(results: dict[Trial, dict]) -> list[dict]:
    """Per setting: every metric's per-seed values and evaluation errors, mean and interval
    (both sources of noise), each comparison's verdict, and the count of seeds whose own
    (bootstrap) verdict was VAE / AE / neither."""
    by_setting: dict[tuple[float, int], list[Trial]] = {}
    for trial in results:
        by_setting.setdefault(trial.setting, []).append(trial)
    rows = []
    for (beta, dim), group in by_setting.items():
        group = sorted(group, key=lambda t: t.seed)
        found = [trial_estimates(results[t]) for t in group]
        metrics = {
            key: summarise_metric([f[key] for f in found])
            for key in sorted(set.intersection(*map(set, found)))
        }
        comparisons = results[group[0]]["comparison"]
        rows.append(
            {
                "beta": beta,
                "latent_dim": dim,
                "seeds": [t.seed for t in group],
                "metrics": metrics,
                "verdicts": {name: compare_across_seeds(name, found) for name in comparisons},
                "seed_verdicts": {
                    name: seed_verdicts(name, [results[t] for t in group]) for name in comparisons
                },
            }
        )
    return rows


def summarise_metric(per_seed: list[tuple[float, str, Estimate]]) -> dict:
    scale = per_seed[0][1]
    estimates = [e for _, _, e in per_seed]
    return {
        "mean": float(np.mean([v for v, _, _ in per_seed])),
        "ci": inference.interval(scale, estimates),
        "seeds": [v for v, _, _ in per_seed],
        "evaluation_se": [e.standard_error for e in estimates],  # on `scale`
        "scale": scale,
    }


def compare_across_seeds(name: str, found: list[dict[str, tuple[float, str, Estimate]]]) -> dict:
    """A comparison's verdict from every seed's difference (and ratio), with its margin and
    the equivalence interval it was tested on."""
    declared = measure(name)
    difference = [f[f"{name}.difference"][2] for f in found]
    ratios = [f[f"{name}.ratio"][2] for f in found if f"{name}.ratio" in f]
    ratio = ratios if len(ratios) == len(found) else None
    equivalence, _ = inference.equivalence_interval(difference, ratio, declared.margin)
    return {
        "verdict": inference.verdict(difference, ratio, declared.margin, declared.lower_is_better),
        "margin": str(declared.margin),
        "equivalence_ci": equivalence,
    }


def seed_verdicts(name: str, trial_metrics: list[dict]) -> dict[str, int]:
    counts = {word: 0 for word in VERDICT_WORDS}
    for m in trial_metrics:
        counts[m["comparison"][name]["verdict"]] += 1
    return counts


def markdown_table(rows: list[dict], sweep: str) -> str:
    """One row per setting of a sweep ('beta' or 'latent_dim'), 'mean [interval]' cells."""
    head = [sweep] + [label for _, label in TABLE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[sweep]:g}"]
        for key, _ in TABLE:
            m = row["metrics"].get(key)
            name, _, part = key.rpartition(".")
            word = row["verdicts"][name]["verdict"] if m and f".{part}" in VERDICT_PARTS else ""
            cells.append(f"{m['mean']:.4g} [{m['ci'][0]:.4g}, {m['ci'][1]:.4g}] {word}".strip() if m else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWEEPS = ("beta", "latent_dim")  # each a table in study.md and, with two settings or more, a figure
STUDY_FILES = {"study.json", "study.md", *(f"{sweep}.png" for sweep in SWEEPS)}  # all reports/study/ holds


def sweeps(rows: list[dict], params: Params) -> dict[str, list[dict]]:
    """The rows of the beta sweep (at the base latent size) and of the latent sweep (at the
    base beta), each sorted along its axis."""
    beta, dim = params.train.vae.beta, params.train.vae.latent_dim
    return {
        "beta": sorted(
            (r for r in rows if r["latent_dim"] == dim and r["beta"] in params.study.betas),
            key=lambda r: r["beta"],
        ),
        "latent_dim": sorted(
            (r for r in rows if r["beta"] == beta and r["latent_dim"] in params.study.latent_dims),
            key=lambda r: r["latent_dim"],
        ),
    }


def write_reports(rows: list[dict], params: Params, out_dir: Path) -> list[Path]:
    """study.json (every number), study.md (the two tables) and one figure per sweep, all
    replaced together."""
    from vaectl.figures import study_figure

    by_sweep = sweeps(rows, params)
    doc = {
        "level": LEVEL,
        "interval": "seeds' spread and each trial's evaluation error (vaectl.inference)",
        "verdicts": "better / worse / equivalent (90% interval inside the margin) / inconclusive",
        "iw_samples": params.study.iw_samples,
        "seeds": params.study.seeds,
        "base": {"beta": params.train.vae.beta, "latent_dim": params.train.vae.latent_dim},
        "settings": rows,
    }
    text = [
        f"# VAE vs AE across beta and latent size ({len(params.study.seeds)} training seeds "
        f"each; mean [{LEVEL:.0%} interval: seeds and evaluation]; IW-NLL k={params.study.iw_samples})",
        "",
        "A ratio or difference column ends in the VAE's verdict against the AE: better, worse, "
        f"equivalent (the 90% interval inside the metric's margin: {RELATIVE_5}; "
        f"unrecognised shares {MEASURES['unrecognised'].margin}) or inconclusive.",
    ]
    for sweep, label in (
        ("beta", f"beta (latent_dim {params.train.vae.latent_dim})"),
        ("latent_dim", f"latent size (beta {params.train.vae.beta:g})"),
    ):
        text += ["", f"## {label}", "", markdown_table(by_sweep[sweep], sweep)]
    with atomic_path(out_dir, claim=only_files(STUDY_FILES)) as tmp:
        tmp.mkdir()
        write_json(tmp / "study.json", doc)
        (tmp / "study.md").write_text("\n".join(text) + "\n")
        for sweep, sweep_rows in by_sweep.items():
            if len(sweep_rows) >= 2:
                study_figure(sweep_rows, sweep, tmp / f"{sweep}.png")
    return sorted(out_dir.iterdir())


# `dvc queue status` reads the queue's message files while a worker rewrites them, and now and
# then fails on a half-written one ("Extra data: line 1 column 56"); a poll retries it this often
STATUS_RETRIES, STATUS_RETRY_S = 5, 2.0


# A `dvc queue status` costs about a CPU-second (DVC's import), taken from the trials' cores:
# every 2 s that was a sixth of a core for the whole study. The poll now waits a tenth of the
# time since a trial last finished, within these bounds: short trials are still heard at once,
# long ones (minutes each) are asked after every 20 s, and the last is heard at most 20 s late.
POLL_MIN_S, POLL_MAX_S = 2.0, 20.0


def poll_wait(since_last_done_s: float) -> float:
    return min(POLL_MAX_S, max(POLL_MIN_S, since_last_done_s / 10))


def queue_status(env: dict, retries: int = 0) -> tuple[dict[str, str], bool]:
    """Experiment name -> Queued | Running | Success | Failed, and whether any queue worker
    is alive, from `dvc queue status` (asked up to `retries` more times if it fails)."""
    for attempt in range(retries + 1):
        try:
            listing = dvc("queue", "status", env=env)
            break
        except UserError:
            if attempt == retries:
                raise
            time.sleep(STATUS_RETRY_S)
    status, workers = {}, True
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in ("Queued", "Running", "Success", "Failed"):
            status[parts[1]] = parts[-1]
        elif line.startswith("Worker status:"):
            workers = line.replace(",", " ").split()[2:5:2] != ["0", "0"]
    return status, workers


def start_workers(env: dict, jobs: int) -> None:
    """`jobs` queue workers, a trial each (each trial computes on the pinned numerics in its
    own copy of the repo, so the bytes do not depend on how many run at once). Their output
    goes nowhere: a worker outlives `dvc queue start`, and would hold a pipe open until the
    queue is empty."""
    started = subprocess.run(
        ["dvc", "queue", "start", "--jobs", str(jobs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if started.returncode != 0:
        raise UserError("`dvc queue start` failed; see `dvc queue status`")


def run_trials(todo: list[Trial], iw_samples: int, env: dict, jobs: int, echo) -> None:
    """Queue every trial (replacing an earlier experiment of the same name), start `jobs`
    workers and wait for all of them; a failed trial is an error naming it."""
    status, _ = queue_status(env)  # tasks of an interrupted study under the same names
    leftover = [t.name for t in todo if status.get(t.name) in ("Queued", "Failed")]
    if leftover:
        dvc("queue", "remove", *leftover, env=env)
    existing = set(dvc("exp", "list", "--name-only", env=env).split())
    stale = [t.name for t in todo if t.name in existing]
    if stale:
        dvc("exp", "remove", *stale, env=env)
    for trial in todo:
        dvc(
            "exp",
            "run",
            "--queue",
            "--quiet",
            "--name",
            trial.name,
            *(a for o in trial.overrides(iw_samples) for a in ("-S", o)),
            "evaluate",
            env=env,
        )
    start_workers(env, jobs)
    names, done, start = [t.name for t in todo], set(), time.monotonic()
    last_done = start
    while True:
        status, workers = queue_status(env, retries=STATUS_RETRIES)
        if not workers and any(status.get(n) == "Queued" for n in names):
            start_workers(env, jobs)  # idle workers from an earlier run may have exited meanwhile
        for name in names:
            if name not in done and status.get(name) in ("Success", "Failed"):
                done.add(name)
                last_done = time.monotonic()
                echo(
                    f"[{len(done)}/{len(names)}] {name}: {status[name].lower()} "
                    f"({time.monotonic() - start:.0f} s)"
                )
        if len(done) == len(names):
            break
        time.sleep(poll_wait(time.monotonic() - last_done))
    failed = [n for n in names if status.get(n) == "Failed"]
    if failed:
        raise UserError(
            f"study: {len(failed)} of {len(names)} experiments failed "
            f"({', '.join(failed)}); see `dvc queue logs {failed[0]}`"
        )


def experiment_metrics(names: list[str], baseline_rev: str, env: dict) -> dict[str, dict]:
    """Each named experiment's reports/metrics.json: its commit from `dvc exp show --json` of
    the commit the trials were queued on (HEAD may have moved since), the file from git (it
    is a git-tracked output, not a DVC metric: summary.json is)."""
    commits = {}
    for baseline in json.loads(dvc("exp", "show", "--json", "--rev", baseline_rev, env=env)):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") in names and rev.get("rev"):
                    commits[rev["name"]] = rev["rev"]
    found = {}
    for name, commit in commits.items():
        shown = subprocess.run(
            ["git", "show", f"{commit}:reports/metrics.json"], capture_output=True, text=True, env=env
        )
        if shown.returncode == 0:
            found[name] = json.loads(shown.stdout)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"study: no reports/metrics.json in the experiment commits of {', '.join(missing)}")
    return found


def run(params: Params, out_dir: Path, jobs: int, echo=print) -> dict:
    """Run the grid, `jobs` trials at a time, write reports/study/, log a parent MLflow run
    that the trials' evaluate runs are nested under. Returns {'rows', 'files', 'wall_s', 'run_id'}."""
    from vaectl import pipeline, tracking

    todo = trials(params)
    env = {
        **pipeline.dvc_env(),
        # the queue runs each trial in a temporary copy of the repo: log to this one's store
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
    }
    echo(
        f"study: {len(todo)} experiments ({len({t.setting for t in todo})} settings x "
        f"{len(params.study.seeds)} seeds), IW-NLL k={params.study.iw_samples}"
    )
    baseline_rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, env=env
    ).stdout.strip()
    if not baseline_rev:
        raise UserError("study: DVC experiments need a git repository with a commit")
    # A trial reproduces only up to `evaluate`, but DVC then collects every output dvc.lock
    # names (the 2-D models, holes, export): they must be in the cache, so the baseline first.
    echo("study: bringing the baseline pipeline up to date first (vaectl repro)")
    pipeline.reproduce(Path.cwd(), jobs, echo)
    start = time.monotonic()
    run_trials(todo, params.study.iw_samples, env, jobs, echo)
    wall_s = time.monotonic() - start
    metrics = experiment_metrics([t.name for t in todo], baseline_rev, env)
    rows = summarise({t: metrics[t.name] for t in todo})
    files = write_reports(rows, params, out_dir)
    experiment = params.tracking.experiment
    with tracking.start_run(experiment, "study", {"vaectl.kind": "study"}) as parent:
        parent.log_params(
            {
                "betas": params.study.betas,
                "latent_dims": params.study.latent_dims,
                "seeds": params.study.seeds,
                "iw_samples": params.study.iw_samples,
                "experiments": len(todo),
            }
        )
        parent.log_metrics({"wall_s": wall_s})
        for path in files:
            parent.log_artifact(path, "study")
        children = {}
        for t in todo:
            run_id = tracking.latest_run_id(experiment, {"vaectl.kind": "evaluate", "dvc.exp_name": t.name})
            if run_id:
                children[run_id] = {
                    "study.beta": t.beta,
                    "study.latent_dim": t.latent_dim,
                    "study.seed": t.seed,
                }
        tracking.nest_runs(parent.run_id, children)
    if len(children) < len(todo):
        echo(
            f"note: {len(todo) - len(children)} trials' evaluate runs were not found in MLflow "
            f"(run by an older queue worker with another tracking store?)"
        )
    return {"rows": rows, "files": files, "wall_s": wall_s, "run_id": parent.run_id}
