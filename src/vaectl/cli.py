"""The `vaectl` command line: parse options, load params once, call a stage, print.

Heavy libraries (torch, mlflow, great_expectations) are imported inside commands so that
`vaectl --help` stays instant.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from pathlib import Path

import typer

from vaectl import UserError, __version__
from vaectl.layout import DEFAULT_MODELS, DEFAULT_MODELS_2D, KINDS, LAYOUT
from vaectl.params import Params, load_params

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring lines join into paragraphs instead of breaking mid-sentence
)

PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (YAML)")
RECOMPUTE = typer.Option(
    False, "--recompute", help="compute again even when the outputs are up to date with dvc.lock"
)
QUIET = typer.Option(
    False, "--quiet", "-q", help="no progress lines on stderr (errors and the result still print)"
)


def progress(quiet: bool, command: str):
    """What a long command says on stderr as it goes, one line a step after its name, or
    nothing with --quiet."""
    return (lambda line: None) if quiet else (lambda line: typer.echo(f"{command}: {line}", err=True))


def stop_with_dvc() -> None:
    """Under `dvc repro` (DVC_STAGE set), have the kernel send this process SIGTERM when DVC
    dies, kill -9 included: a stage must not go on writing outputs that no DVC is waiting for.
    It then stops as on any SIGTERM. Linux only; elsewhere a no-op."""
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # DVC died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def load_computing(params_path: Path) -> Params:
    """The params of a stage that computes, with their numerics in force: called before the
    stage module is imported, since the portable pins must be set before torch and numpy load."""
    from vaectl import numerics

    stop_with_dvc()
    params = load_params(params_path)
    numerics.apply(params.numerics)
    return params


def worker_count(params: Params) -> int:
    """Processes for a stage's per-image work (shards.py: VAECTL_WORKERS, or one a core)."""
    from vaectl import shards

    return shards.worker_count(params.numerics.threads)


def user_errors(command):
    """Turn a UserError into one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(1) from None
        except Exception as err:
            line = _place_failure(err, kwargs) or _store_failure(err)
            if line is None:
                raise
            typer.secho(f"error: {line}", fg="red", err=True)
            raise typer.Exit(1) from None

    return wrapper


# what the file system refused, and what the user can do about it
PLACE_ERRORS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some of your quota or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "check its permissions or use another place",
    errno.EPERM: "check its permissions or use another place",
}


def _place_failure(err: Exception, kwargs: dict) -> str | None:
    """One line for a place the command cannot write or read (a full disk, a read-only
    mount), naming the file, or the command's output when the OS names none."""
    if not isinstance(err, OSError) or err.errno not in PLACE_ERRORS:
        return None
    place = err.filename or next((kwargs[k] for k in ("out", "output") if kwargs.get(k)), None)
    if place is not None and Path(place).name.endswith(".tmp"):  # a stage's staging folder
        place = Path(place).parent
    where = f"{place}: " if place is not None else ""
    return f"{where}{err.strerror or os.strerror(err.errno)}; {PLACE_ERRORS[err.errno]}"


def _store_failure(err: Exception) -> str | None:
    """tracking's one line for a failure of the MLflow store; mlflow is only asked about an
    error when a command loaded it."""
    if "mlflow" not in sys.modules:
        return None
    from vaectl import tracking

    return tracking.store_failure(err)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the signal lands so that `finally`/`with` clean-ups run."""


def interruptible(command):
    """Ctrl-C or SIGTERM stop the command with one line and exit 130 / 143: its MLflow run
    ends KILLED, its temporary files are removed, and its previous outputs stay as they were
    (every stage replaces its outputs only once they are complete)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        def terminate(signum, frame):
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as stop:
            typer.secho(
                f"interrupted: `vaectl {command.__name__}` stopped; its previous outputs are "
                "as they were and nothing half-written is left",
                fg="yellow",
                err=True,
            )
            raise typer.Exit(143 if isinstance(stop, Terminated) else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def print_version(value: bool) -> None:
    if value:
        typer.echo(f"vaectl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=print_version, is_eager=True, help="print vaectl's version and exit"
    ),
):
    """Train and compare a VAE and an AE baseline on MNIST-family images, tracked in MLflow,
    staged with DVC."""


@app.command()
@user_errors
def doctor(
    params_path: Path = PARAMS,
    lock: Path = typer.Option(Path("requirements.lock"), help="the lock `make setup` installs"),
):
    """What a result's bytes depend on here (package versions against the lock, the CPU's
    instruction sets, the kernels and threads that params.yaml's numerics put in force), and
    the tracking store and DVC remote the commands would use, and which servers of a team
    stack started here run. Exits 1 when the installed packages differ from the lock, the
    store cannot be read or the remote does not answer.

    Example: vaectl doctor   (run it on both machines when two runs disagree)
    """
    from vaectl import environment, numerics

    params = load_computing(params_path)
    from vaectl import pipeline, tracking

    model, flags = environment.cpu()
    native = numerics.native_capability()
    state = numerics.in_force()
    typer.echo(f"vaectl {__version__}, " + ", ".join(f"{k} {v}" for k, v in environment.versions().items()))
    typer.echo(f"cpu: {model}; {' '.join(flags) or 'none of the listed instruction sets'}")
    typer.echo(
        f"numerics: {params.numerics.mode} ({params_path}): torch runs its "
        f"{state['torch_cpu_capability']} kernels (its own pick here: {native}) on "
        f"{state['torch_threads']} thread{'' if state['torch_threads'] == '1' else 's'}; "
        + ", ".join(f"{k}={os.environ.get(k, '')!r}" for k in numerics.PORTABLE_ENV)
    )
    problems = []
    try:
        typer.echo(f"tracking store: {tracking.store_summary(params.tracking.experiment)}")
    except UserError as err:
        problems.append(f"tracking store: {err}")
    remote, failed = pipeline.remote_summary(Path.cwd())
    (problems.append if failed else typer.echo)(f"DVC remote: {remote}")
    from vaectl import team

    try:
        stack = team.summary(os.environ, Path.cwd())
        if stack:
            typer.echo(f"team stack: {stack}")
    except UserError as err:  # a VAECTL_TEAM_* setting it cannot read
        problems.append(f"team stack: {err}")
    if not lock.is_file():
        raise UserError(f"lock file not found: {lock} (`make lock` writes it)")
    drift = environment.lock_drift(lock)
    pins = len(environment.locked_versions(lock))
    for name, (locked, found) in drift.items():
        problem = f"differs from {lock}: {name} {found or 'not installed'} (locked {locked})"
        typer.secho(problem, fg="red", err=True)
    if drift:
        problems.append(f"{len(drift)} of {pins} packages differ from {lock}; `make setup` installs it")
    else:
        typer.echo(f"packages: all {pins} pins of {lock} installed exactly")
    for line in problems[:-1]:
        typer.secho(line, fg="red", err=True)
    if problems:
        raise UserError(problems[-1])


@app.command()
@user_errors
@interruptible
def fetch(
    params_path: Path = PARAMS,
    out: Path = typer.Option(LAYOUT.prepared, help="where the prepared splits go"),
):
    """Fetch the dataset named by data.name, split it, write arrays + manifest.

    Mirrors: VAECTL_MIRROR (directories or URLs separated by whitespace, as in pip's
    PIP_EXTRA_INDEX_URL) is tried first, then data.mirrors, then torchvision's own mirrors.
    VAECTL_FETCH_TIMEOUT (seconds, default 60) bounds every wait for a mirror.

    Example: VAECTL_MIRROR=/usr/share/datasets/fashion-mnist vaectl fetch
    """
    params = load_computing(params_path)
    from vaectl.data import fetch as stage

    env_mirrors = os.environ.get("VAECTL_MIRROR", "").split()
    manifest = stage.run(params.data, out, env_mirrors)
    counts = ", ".join(f"{s} {d['count']}" for s, d in manifest["splits"].items())
    typer.echo(f"fetched {manifest['source']['name']}: {counts} -> {out}")


@app.command()
@user_errors
def validate(
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    report: Path = typer.Option(LAYOUT.validation, help="JSON report (DVC metric)"),
    docs: Path = typer.Option(LAYOUT.data_docs, help="Data Docs HTML site"),
):
    """Check the prepared data with a great-expectations suite; non-zero exit on any failure.

    Example: vaectl validate && open reports/data_docs/index.html
    """
    params = load_computing(params_path)
    from vaectl import validate as stage

    outcome = stage.run(params.validate, prepared, report, docs, params.tracking.experiment)
    if not outcome.success:
        for line in outcome.failures:
            typer.secho(f"FAILED {line}", fg="red", err=True)
        raise UserError(
            f"validation failed: {len(outcome.failures)} of "
            f"{outcome.report['expectations_evaluated']} expectations (details in {report})"
        )
    typer.echo(
        f"validation passed: {outcome.report['expectations_evaluated']} expectations "
        f"-> {report}, {docs}/index.html"
    )


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        metavar="NAME",
        help="its name: checkpoints go to models/NAME, curves to reports/curves/NAME.json",
    ),
    kind: str = typer.Option(
        None, "--kind", metavar="vae|ae", help="which model to train", show_default="NAME up to its first '-'"
    ),
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    resume: bool = typer.Option(False, "--resume", help="continue from models/NAME/last.pt"),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="training processes (torch DDP via torchrun; gloo on CPU)"
    ),
    latent_dim: int = typer.Option(
        None, "--latent-dim", min=1, help="instead of train.KIND.latent_dim (the 2-D experiment: 2)"
    ),
    nodes: int = typer.Option(
        1, "--nodes", min=1, max=64, help="hosts training together, each running this same command"
    ),
    rendezvous: str = typer.Option(
        None,
        "--rendezvous",
        metavar="HOST:PORT",
        help="with --nodes: a free port on one host, where all meet",
    ),
):
    """Train the VAE or the AE baseline; checkpoints each epoch, logs the run to MLflow.

    Example: vaectl train --model vae   (then `make ui` to watch curves and samples)

    Example: vaectl train --model vae-2d --latent-dim 2   (a VAE named vae-2d)

    Example: vaectl train --model vae --nproc 2   (same as `torchrun --standalone
    --nproc-per-node 2 -m vaectl train --model vae`; the global batch is split between them)

    Example: vaectl train --model vae --nodes 2 --rendezvous host-a:29400   (on host-a and
    host-b alike; the same bytes as --nproc 2 on one host; files and run where rank 0 runs)
    """
    files = LAYOUT.model(model)  # a name that stays one folder under models/, checked first
    named_kind = kind is None
    kind = kind or model.split("-")[0]
    if kind not in KINDS:  # a choice, checked here to keep the error on one line
        raise UserError(
            f"--kind must be one of {', '.join(KINDS)}, got {kind!r}"
            + (f" (from --model {model}; give --kind)" if named_kind else "")
        )
    params = load_computing(params_path)
    from vaectl import train as stage
    from vaectl.distributed import Launch, launched

    if latent_dim is not None:
        params = stage.with_latent_dim(params, kind, latent_dim)
    again = " ".join(["vaectl train", *given_options(ctx, drop=("resume",)), "--resume"])
    try:
        spec = Launch(nproc, nodes, rendezvous)
        if spec.world > 1:
            workers = given_options(ctx, drop=("nproc", "nodes", "rendezvous"))
            stage.run_processes(kind, params, prepared, files.dir, resume, spec, workers)
            return
        summary = stage.run_exclusive(kind, params, prepared, files, resume)
    except KeyboardInterrupt:
        if not launched():  # under a launcher, the launcher says it once
            typer.secho(
                f"interrupted: last checkpoint kept in {files.dir}/last.pt; continue with `{again}`",
                fg="yellow",
                err=True,
            )
        raise typer.Exit(130) from None
    if summary is not None:
        typer.echo(
            f"{model}: best val loss {summary['best_val_loss']:.2f} nats at epoch "
            f"{summary['best_epoch']} of {summary['epochs_run']} -> {files.dir} "
            f"(MLflow run {summary['run_id']})"
        )


def given_options(ctx: typer.Context, drop: tuple[str, ...] = ()) -> list[str]:
    """The command's options as the user gave them, but those named in `drop`: what `--nproc`
    forwards to each training process and a resume hint repeats, every option (one added
    later too) without naming each."""
    args: list[str] = []
    for param in ctx.command.params:
        name, value = param.name or "", ctx.params.get(param.name or "")
        source = ctx.get_parameter_source(name)
        if name in drop or value is None or source is None or source.name == "DEFAULT":
            continue
        if getattr(param, "is_flag", False):
            args += [param.opts[0]] if value else []
        else:
            args += [param.opts[0], str(value)]
    return args


@app.command()
@user_errors
@interruptible
def classifier(
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    out: Path = typer.Option(LAYOUT.classifier, help="where the classifier goes"),
):
    """Train the small digit classifier that judges how real decoded images look.

    Example: vaectl classifier && vaectl evaluate
    """
    params = load_computing(params_path)
    from vaectl import classifier as stage

    summary = stage.run(params.eval.classifier, prepared, out, params.tracking.experiment)
    typer.echo(f"classifier: val accuracy {summary['val_accuracy']:.3f} -> {out}")


@app.command()
@user_errors
@interruptible
def evaluate(
    ctx: typer.Context,
    model: str = typer.Option(
        DEFAULT_MODELS[0], metavar="NAME", help="the VAE (`vaectl train --model NAME`)"
    ),
    baseline: str = typer.Option(
        DEFAULT_MODELS[1], metavar="NAME", help="the AE baseline (`vaectl train --model NAME`)"
    ),
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    reports: Path = typer.Option(LAYOUT.reports, help="where summary.json, metrics.json and figures/ go"),
    recompute: bool = RECOMPUTE,
):
    """Compare the VAE with the AE baseline on the test split: likelihood, reconstruction,
    interpolation smoothness, realism of midpoints and samples.

    Run by hand as dvc.yaml runs it, it prints the comparison at once when `dvc status
    evaluate` finds the reports those dvc.lock records for the models and data as they are,
    and otherwise says why it evaluates again.

    Example: vaectl evaluate --baseline ae && dvc metrics diff
    """
    shown = ("protocol", "vae", "ae", "comparison")
    if answered_from_outputs(ctx, recompute, reports / "metrics.json", shown, print_comparison):
        return
    params = load_computing(params_path)
    from vaectl import evaluate as stage

    report, run_id = stage.run(
        params.eval,
        prepared,
        LAYOUT.model(model),
        LAYOUT.model(baseline),
        LAYOUT.classifier_checkpoint,
        reports,
        reports / "figures",
        params.tracking.experiment,
        echo=lambda m: typer.echo(m, err=True),
        workers=worker_count(params),
    )
    print_comparison(report)
    figures = sorted((reports / "figures").glob("*.png"))
    typer.echo(
        f"wrote {reports / 'summary.json'}, {reports / 'metrics.json'}, {reports / 'latents.json'} "
        f"and {len(figures)} figures "
        f"in {reports / 'figures'}; MLflow run {run_id} (experiment {params.tracking.experiment})"
    )


DVC_STATUS_TIMEOUT_S = 120


def answered_from_outputs(ctx: typer.Context, recompute: bool, report: Path, keys: tuple, show) -> bool:
    """A stage command run by hand as dvc.yaml runs it (every option at its default; the
    command's name is the stage's) shows its up-to-date results instead of computing them:
    True when `dvc status` finds the stage's outputs those dvc.lock records for its inputs as
    they are, and `show` printed them from `report`. Otherwise it says in one line why it
    computes (nothing is said under DVC, outside a DVC project, for other options, or with
    --recompute)."""
    stage = ctx.command.name or ""
    by_hand = "DVC_STAGE" not in os.environ and not recompute
    as_the_stage = all(ctx.params[p.name] == p.default for p in ctx.command.params if p.name != "recompute")
    if not (by_hand and as_the_stage):
        return False
    changes = stage_changes(stage)
    if changes is None:  # DVC cannot tell here: compute, saying nothing (errors stay one line)
        return False
    if changes:
        typer.echo(f"{stage}: not up to date with dvc.lock ({'; '.join(changes)}); computing again", err=True)
        return False
    from vaectl.files import read_json

    show(read_json(report, f"vaectl {stage}", keys))
    typer.echo(
        f"{stage} is up to date with dvc.lock: the results in {report} (--recompute computes again)",
        err=True,
    )
    return True


def stage_changes(stage: str) -> list[str] | None:
    """What `dvc status STAGE` finds changed between the stage's inputs and outputs as they
    are and what dvc.lock records, in words ([] when nothing); None when DVC cannot tell
    (no DVC project here, no such stage, no answer within DVC_STATUS_TIMEOUT_S)."""
    import json
    import subprocess

    command = [sys.executable, "-m", "dvc", "status", stage, "--json"]
    try:
        found = subprocess.run(command, capture_output=True, text=True, timeout=DVC_STATUS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    if found.returncode != 0:
        return None
    changes = []
    for entry in json.loads(found.stdout or "{}").get(stage, []):
        for kind, paths in entry.items() if isinstance(entry, dict) else [(entry, {})]:
            changes.append(kind + "".join(f" {path} ({_words(state)})" for path, state in paths.items()))
    return changes


def _words(state: str | dict) -> str:
    """`modified`, or a params file's changed keys."""
    return state if isinstance(state, str) else ", ".join(f"{key} {value}" for key, value in state.items())


def print_comparison(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from vaectl.report import comparison_rows, headline_first

    table = Table(
        title=f"VAE vs AE on {report['test_images']} test images and "
        f"{report['interp_pairs']} pairs of each kind (95% bootstrap intervals)",
        caption=report["protocol"],
    )
    for column in ("metric", "VAE", "AE", "VAE/AE", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right", no_wrap=True)
    for row in headline_first(comparison_rows(report)):
        table.add_row(*row)
    Console(width=160).print(table)
    real = report["real_images"]
    typer.echo(
        f"real test images: classifier max-prob {real['max_prob']:.3f}, entropy "
        f"{real['entropy']:.3f}, unrecognised {real['unrecognised']:.3f}"
    )


@app.command()
@user_errors
@interruptible
def ood(
    ctx: typer.Context,
    model: str = typer.Option(
        DEFAULT_MODELS[0], metavar="NAME", help="the VAE (`vaectl train --model NAME`)"
    ),
    baseline: str = typer.Option(DEFAULT_MODELS[1], metavar="NAME", help="the AE baseline"),
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    report: Path = typer.Option(LAYOUT.ood, help="every detection metric with its interval"),
    figures_dir: Path = typer.Option(LAYOUT.ood_figures, "--figures", help="score histograms and ROC curves"),
    recompute: bool = RECOMPUTE,
):
    """Out-of-distribution scoring: the test split against novel sets (ood.other, ood.shifts),
    scored by the VAE's likelihoods and the AE's reconstruction error; AUROC, AUPRC and FPR
    at 95% TPR with 95% intervals, each VAE score against the AE's.

    Example: vaectl ood && cat reports/ood.json; VAECTL_MIRROR=/usr/share/datasets/fashion-mnist
    vaectl ood (with ood.other: fashion-mnist)
    """
    if answered_from_outputs(ctx, recompute, report, ("sets",), print_ood):
        return
    params = load_computing(params_path)
    from vaectl import ood as stage

    result = stage.run(
        params.ood,
        params.eval,
        os.environ.get("VAECTL_MIRROR", "").split() + params.data.mirrors,
        prepared,
        LAYOUT.model(model).dir,
        LAYOUT.model(baseline).dir,
        report,
        figures_dir,
        params.tracking.experiment,
        worker_count(params),
    )
    print_ood(result)
    typer.echo(f"wrote {report} and {figures_dir}")


def print_ood(result: dict) -> None:
    for name, found in result["sets"].items():
        cells = ", ".join(
            f"{score} {m['auroc']['value']:.3f} [{m['auroc']['ci'][0]:.3f}, {m['auroc']['ci'][1]:.3f}]"
            for score, m in found["scores"].items()
        )
        typer.echo(f"test split vs {name} ({found['images']} images), AUROC: {cells}")


@app.command()
@user_errors
@interruptible
def holes(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODELS_2D[0], metavar="NAME", help="a VAE with latent_dim 2, by name"),
    baseline: str = typer.Option(DEFAULT_MODELS_2D[1], metavar="NAME", help="an AE with latent_dim 2"),
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    report: Path = typer.Option(LAYOUT.holes, help="hole metrics (DVC metric)"),
    figures_dir: Path = typer.Option(LAYOUT.holes_figures, "--figures", help="the two figures"),
    recompute: bool = RECOMPUTE,
):
    """The 2-D latent experiment: where test images land, what each latent region decodes to,
    and the share of latents whose decoded image is no recognisable digit, VAE vs AE.

    Example: vaectl train --model vae-2d --latent-dim 2 (and ae-2d), then
    vaectl holes && open reports/holes/manifold_2d.png
    """
    if answered_from_outputs(ctx, recompute, report, ("comparison",), print_holes):
        return
    params = load_computing(params_path)
    from vaectl import holes as stage

    result = stage.run(
        params.eval,
        prepared,
        LAYOUT.model(model).dir,
        LAYOUT.model(baseline).dir,
        LAYOUT.classifier_checkpoint,
        report,
        figures_dir,
        params.tracking.experiment,
    )
    print_holes(result)


def print_holes(result: dict) -> None:
    from vaectl.report import verdict_word

    for name, c in result["comparison"].items():
        typer.echo(
            f"{name}: VAE {c['vae']:.3f} [{c['vae_ci'][0]:.3f}, {c['vae_ci'][1]:.3f}], "
            f"AE {c['ae']:.3f} [{c['ae_ci'][0]:.3f}, {c['ae_ci'][1]:.3f}]: {verdict_word(c)}"
        )


@app.command()
@user_errors
@interruptible
def report(
    params_path: Path = PARAMS,
    reports: Path = typer.Option(LAYOUT.reports, help="the stages' reports; index.html goes here"),
    model: str = typer.Option(DEFAULT_MODELS[0], metavar="NAME", help="the VAE evaluate and ood scored"),
    baseline: str = typer.Option(DEFAULT_MODELS[1], metavar="NAME", help="the AE evaluate and ood scored"),
    model_2d: str = typer.Option(DEFAULT_MODELS_2D[0], metavar="NAME", help="the VAE holes scored"),
    baseline_2d: str = typer.Option(DEFAULT_MODELS_2D[1], metavar="NAME", help="the AE holes scored"),
):
    """One self-contained page (tables with intervals, data checks, figures) that renders
    with no network: reports/index.html. Every report and figure on it is checked against the
    MLflow run that wrote it, and that run against the models named here.

    Example: vaectl report && xdg-open reports/index.html
    """
    from vaectl import html_report as stage

    experiment = load_params(params_path).tracking.experiment
    run_id = stage.run(reports, experiment, (model, baseline), (model_2d, baseline_2d))
    typer.echo(f"wrote {reports / 'index.html'}; attached to the evaluate MLflow run {run_id}")


@app.command()
@user_errors
@interruptible
def export(
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data from `vaectl fetch`"),
    out: Path = typer.Option(LAYOUT.exports, help="one directory per model goes here"),
    metrics: Path = typer.Option(LAYOUT.metrics, help="from `vaectl evaluate`"),
):
    """Export both models: torch.export (.pt2) + ONNX (parity-checked), latent prior, model card.

    Example: vaectl export && ls export/vae
    """
    params = load_computing(params_path)
    from vaectl import export as stage

    parities = stage.run(("vae", "ae"), prepared, LAYOUT.models, metrics, out, params.tracking.experiment)
    for kind, parity in parities.items():
        worst = max(parity.values())
        typer.echo(f"{kind}: exported to {out / kind} (ONNX vs torch max abs diff {worst:.1e})")


@app.command()
@user_errors
@interruptible
def register(
    params_path: Path = PARAMS,
    prepared: Path = typer.Option(LAYOUT.prepared, help="prepared data (input example)"),
    exported: Path = typer.Option(LAYOUT.exports, help="from `vaectl export`"),
    report: Path = typer.Option(LAYOUT.registry, help="what was registered"),
):
    """Register the VAE and the AE as new model versions (@candidate); move @champion when
    the promotion rule in params.yaml (registry.*) holds, on the test metrics of the evaluate
    run that scored the exported checkpoints (read from MLflow, not from reports/). Inside a
    DVC experiment it checks the exports and registers nothing.

    Example: vaectl register && vaectl pull vae-mnist@champion --dest deploy/
    """
    from vaectl import registry as stage

    params = load_params(params_path)
    result = stage.register(params.registry, exported, prepared, params.tracking.experiment, report)
    for r in result.values():
        if r["version"] is None:
            typer.echo(f"{r['name']}: {r['reason']}")
            continue
        action = "promoted to @champion" if r["promoted"] else "left @champion where it was"
        typer.echo(f"{r['name']} v{r['version']} @candidate, {action}: {r['reason']}")


@app.command()
@user_errors
@interruptible
def repro(
    params_path: Path = PARAMS,
    jobs: int = typer.Option(
        0, "--jobs", "-j", min=0, help="stages at once; 0: one a core (cores / numerics.threads)"
    ),
):
    """`dvc repro` of the whole pipeline with independent stages side by side (the trainings,
    then evaluate, ood and holes), each in its own `dvc repro --single-item` process: the same
    dvc.lock and the same bytes as one at a time, in less wall time.

    Example: vaectl repro --jobs 2 && git status
    """
    from vaectl import pipeline, shards

    threads = load_params(params_path).numerics.threads
    jobs = jobs or shards.one_a_core(threads)
    pipeline.share_cores(jobs, threads)
    done = pipeline.reproduce(Path.cwd(), jobs, echo=typer.echo)
    if done["stages"]:
        typer.echo(
            f"pipeline: {len(done['stages'])} stages in {done['wall_s']:.0f} s, "
            f"{done['busy_s'] / done['wall_s']:.2f} stages busy on average"
        )


@app.command()
@user_errors
def study(
    params_path: Path = PARAMS,
    overlay_file: Path | None = typer.Option(
        None, "--overlay", help="another grid: a YAML naming only study.* keys, e.g. params/study-full.yaml"
    ),
    out: Path = typer.Option(LAYOUT.study, help="tables and figures (replaced together)"),
    jobs: int = typer.Option(
        0, "--jobs", "-j", min=0, help="experiments at once; 0: one a core (cores / numerics.threads)"
    ),
):
    """Run the study grid in params.yaml (study.*) as queued DVC experiments, one seed per
    experiment, `--jobs` at a time, and summarise each setting across seeds with 95% intervals,
    logged to MLflow as one parent run. Rerunning is cheap: DVC's run cache restores trained
    models.

    Example: vaectl study && cat reports/study/study.md && dvc exp show
    """
    from vaectl import pipeline, shards
    from vaectl import study as grid
    from vaectl.params import study_grid

    params = study_grid(params_path, overlay_file) if overlay_file else load_params(params_path)
    jobs = jobs or shards.one_a_core(params.numerics.threads)
    pipeline.share_cores(jobs, params.numerics.threads)
    result = grid.run(params, out, jobs, echo=typer.echo)
    typer.echo(
        f"study: {len(result['rows'])} settings in {result['wall_s'] / 60:.1f} min -> {out} "
        f"(MLflow run {result['run_id']})"
    )


@app.command()
@user_errors
def exps(
    width: int = typer.Option(120, min=60, max=1000, help="columns the table fits"),
):
    """DVC experiments in one table that fits WIDTH columns: each experiment's params that
    differ from its baseline commit, and the headline of reports/summary.json (IW-NLL, −ELBO,
    active units, reconstruction BCE of both models, and the counts of VAE-better, AE-better,
    equivalent and inconclusive comparisons). `dvc exp show` has every column.

    Example: vaectl exps   (make exps)
    """
    from rich.console import Console

    from vaectl import experiments

    Console(width=width).print(experiments.table(experiments.rows(experiments.shown()), width))


@app.command()
@user_errors
def overlay(
    overlay_file: Path = typer.Argument(
        ..., help="YAML naming only the keys that differ, e.g. params/fashion-literature.yaml"
    ),
    params_path: Path = PARAMS,
    dvc_flags: bool = typer.Option(
        False, "--dvc-flags", help="print `-S key=value` for `dvc exp run` instead"
    ),
):
    """Print params.yaml with a preset's keys put in (checked), for `vaectl STAGE --params`.

    Example: vaectl overlay params/fashion-literature.yaml > literature.yaml;
    dvc exp run -n fashion-literature $(vaectl overlay --dvc-flags params/fashion-literature.yaml)
    """
    import yaml

    from vaectl.params import apply_overlay

    merged, overrides = apply_overlay(params_path, overlay_file)
    if dvc_flags:
        typer.echo(" ".join(f"-S {o}" for o in overrides))
    else:
        typer.echo(yaml.safe_dump(merged, sort_keys=False), nl=False)


@app.command()
@user_errors
def pull(
    ref: str = typer.Argument(..., help="NAME@alias, NAME/version, or NAME (= NAME@champion)"),
    dest: Path = typer.Option(
        Path("deploy"), help="bundle folder: a new or empty one, or an earlier pull's (replaced atomically)"
    ),
    quiet: bool = QUIET,
):
    """Download a registered model as a deploy bundle, verify checksums, load it once.

    Example: vaectl pull vae-mnist@champion --dest deploy/
    """
    from vaectl import registry

    summary = registry.pull(ref, dest, progress(quiet, "pull"))
    typer.echo(
        f"pulled {summary['name']} v{summary['version']} to {dest}: "
        f"{summary['files_verified']} files verified, smoke prediction ok"
    )


@app.command()
@user_errors
def predict(
    ref: str = typer.Argument(..., help="NAME@alias, NAME/version, or NAME (= NAME@champion)"),
    input_path: Path = typer.Option(
        None,
        "--input",
        help="an .npz (its one array, or x) or .npy of "
        "N x 784 or N x 28 x 28 images (float in [0, 1], or uint8), "
        "latents for decode, or a folder of 28 x 28 PNGs",
    ),
    output: Path = typer.Option(Path("predictions.npz"), "--output", help=".npz to write (atomically)"),
    mode: str = typer.Option("reconstruct", metavar="reconstruct|encode|decode|sample|score"),
    n: int = typer.Option(16, help="sample mode: how many images"),
    seed: int = typer.Option(0, help="sample mode: the seed"),
    quiet: bool = QUIET,
):
    """Batch scoring through a registered model's verified pyfunc, as `serve` does.

    Example: vaectl predict vae-mnist@champion --input digits/ --output recon.npz

    The .npz holds `output` (encode: mean and log-variance side by side for the VAE; score:
    each image's score and flag side by side), `mode`, `model` (NAME/version) and, for PNGs,
    their file `names` in row order; score mode adds `score`, `out_of_distribution` and the
    version's `threshold`.
    """
    from vaectl import registry

    summary = registry.predict(ref, input_path, output, mode, n, seed, progress(quiet, "predict"))
    flagged = (
        f"; {summary['out_of_distribution']} out of distribution (score > {summary['threshold']:.4f})"
        if mode == "score"
        else ""
    )
    typer.echo(
        f"{summary['name']} v{summary['version']}: {mode} of {summary['rows']} rows "
        f"-> {output} (output {' x '.join(map(str, summary['shape']))}){flagged}"
    )


@app.command()
@user_errors
@interruptible
def serve(
    ref: str = typer.Argument("vae-mnist@champion", help="NAME@alias or NAME/version"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
    port: int = typer.Option(5002, min=1, max=65535, help="port (`make ui` takes 5000, `make server` 5001)"),
    max_body: int = typer.Option(
        8 << 20, "--max-body", min=1, help="largest request body in bytes; larger ones get 413"
    ),
    max_samples: int = typer.Option(
        1000, "--max-samples", min=1, help="largest `n` of sample mode; larger ones get 400"
    ),
    max_connections: int = typer.Option(
        64, "--max-connections", min=1, help="open connections and requests in flight; more get 503"
    ),
    header_timeout: float = typer.Option(
        10.0,
        "--header-timeout",
        min=0.1,
        help="seconds a connection may take to send a request's headers before it is closed",
    ),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", min=0.1, help="seconds a request may take to send its body; slower get 408"
    ),
    quiet: bool = QUIET,
):
    """Serve a registered model over HTTP: MLflow's scoring server on a copy of the bundle
    verified file by file, with bounded requests and short error replies.

    Example: vaectl serve vae-mnist@champion --port 5002 &
             curl -d '{"inputs": [[0.5, ...784 values]]}' -H 'Content-Type: application/json'
             http://127.0.0.1:5002/invocations
             (add "params": {"mode": "score"} for each image's novelty score and flag)
    """
    from vaectl import registry
    from vaectl.files import temporary_dir
    from vaectl.tracking import serving

    echo = progress(quiet, "serve")
    with temporary_dir("vaectl-serve-") as tmp:
        name, version, bundle, checked = registry.download_verified(ref, Path(tmp), echo)
        echo(f"loading {name} v{version} ({checked} files verified)")
        serving.serve(
            bundle,
            host,
            port,
            serving.Limits(max_body, max_samples, max_connections, header_timeout, body_timeout),
            on_listening=lambda: echo(
                f"{name} v{version} listening on http://{host}:{port}/invocations "
                f"(bodies up to {max_body} bytes, sample n up to {max_samples}); Ctrl-C stops it"
            ),
        )
