"""One tiny end-to-end `dvc repro` in a temporary copy of the repository, then what a user on
another machine does: a fresh clone reproduces the committed dvc.lock byte for byte, also on
other CPUs and thread settings simulated on this one, and a clone that pulls from a DVC
remote is up to date."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaectl.numerics import NUMPY_DISPATCH_TARGETS, PORTABLE_ENV

from .tiny import TINY_EVAL

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e  # one worker runs this module whole (`make test`: --dist loadfile)


def sh(*args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) else value
    return merged


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and name != "dvc.lock":
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(full, TINY_EVAL)))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VAECTL_ROOT", None)
    for pinned in PORTABLE_ENV:  # this machine as it is: each library picks its own kernels
        env.pop(pinned, None)
    env["PYTHONPATH"] = str(root / "src")  # the copy's own code, not the editable install's
    sh("git", "init", "-q", cwd=root, env=env)
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "copy", cwd=root, env=env)
    # two stages at a time; the fresh clones below run `dvc repro`, one at a time, and must
    # find the same bytes
    first = sh("vaectl", "repro", "--jobs", "2", cwd=root, env=env)
    sh("git", "add", "-A", cwd=root, env=env)  # dvc.lock, metrics, the .gitignore DVC wrote
    sh("git", "commit", "-qm", "lock", cwd=root, env=env)
    return root, env, first


def queried(root: Path, env: dict, **expressions: str) -> dict[str, str]:
    """Each Python expression's repr, evaluated in the copy in one process (MLflow's import and
    store start once, not once an expression), with vaectl's tracking modules imported."""
    program = (
        "import json; from vaectl import tracking; from vaectl.tracking import registry_client\n"
        f"print(json.dumps({{name: repr(eval(e)) for name, e in {expressions!r}.items()}}))"
    )
    return json.loads(sh(sys.executable, "-c", program, cwd=root, env=env).strip().splitlines()[-1])


def fresh_clone(root: Path, dest: Path, env: dict) -> tuple[Path, dict]:
    """A clone in another directory, running its own code: whatever records where it ran
    (paths in a TorchScript trace, say) shows up as a changed dvc.lock."""
    sh("git", "clone", "-q", str(root), str(dest), cwd=root, env=env)
    return dest, {**env, "PYTHONPATH": str(dest / "src")}


def test_repro_produces_metrics_figures_and_runs(pipeline_copy, tmp_path):
    root, env, _ = pipeline_copy
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["vae"]["iw_k"] == 50 and metrics["vae"]["iw_nll"] > 0
    assert json.loads((root / "reports" / "validation.json").read_text())["success"]
    assert len(list((root / "reports" / "figures").glob("*.png"))) == 6
    assert (root / "dvc.lock").exists()
    found = queried(
        root,
        env,
        runs="sorted((r.info.run_name, r.info.status) for r in tracking.find_runs('vaectl'))",
        evaluate_artifacts="sorted(f.path for f in tracking.client().list_artifacts("
        "tracking.find_runs('vaectl', \"tags.`vaectl.kind` = 'evaluate'\")[0].info.run_id))",
        candidate="registry_client.resolve_model('vae-mnist@candidate')",
    )
    assert found["runs"] == (
        "[('classifier', 'FINISHED'), ('evaluate', 'FINISHED'), ('export-ae', 'FINISHED'), "
        "('export-vae', 'FINISHED'), ('holes-2d', 'FINISHED'), ('ood', 'FINISHED'), "
        "('register-ae-mnist', 'FINISHED'), ('register-vae-mnist', 'FINISHED'), "
        "('train-ae', 'FINISHED'), ('train-ae-2d', 'FINISHED'), "
        "('train-vae', 'FINISHED'), ('train-vae-2d', 'FINISHED'), ('validate', 'FINISHED')]"
    )
    holes = json.loads((root / "reports" / "holes.json").read_text())
    assert holes["latent_dim"] == 2 and set(holes["comparison"]) == {
        "grid.unrecognised",
        "samples.unrecognised",
        "standard_normal.unrecognised",
    }
    assert sorted(p.name for p in (root / "reports" / "holes").iterdir()) == [
        "latents_2d.png",
        "manifold_2d.png",
    ]
    ood = json.loads((root / "reports" / "ood.json").read_text())
    assert sorted(ood["sets"]) == ["constant", "flipped", "inverted", "noise"]
    assert sorted(p.name for p in (root / "reports" / "ood").iterdir()) == ["roc.png", "scores.png"]
    assert (root / "mlflow.db").exists() and (root / "mlruns" / "artifacts").is_dir()
    # the headline is the one DVC metric; the page went to the evaluate run as well
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=root, env=env))
    assert list(shown[""]["data"]) == ["reports/summary.json"]
    headline = shown[""]["data"]["reports/summary.json"]["data"]
    assert headline["vae"]["iw_nll"] == metrics["vae"]["iw_nll"]
    assert 'src="data:image/png;base64,' in (root / "reports" / "index.html").read_text()
    # `dvc plots show` on the offline template: the curves' Vega plots, no script fetched
    sh("dvc", "plots", "show", "-o", str(tmp_path / "plots"), cwd=root, env=env)
    plots_page = (tmp_path / "plots" / "index.html").read_text()
    assert plots_page.count("vegaEmbed('#") == 5 and "<script src=" not in plots_page
    assert "'index.html'" in found["evaluate_artifacts"] and "'summary.json'" in found["evaluate_artifacts"]
    # what the inputs decide, not the store's version numbers (tests/test_deploy.py)
    registered = json.loads((root / "reports" / "registry.json").read_text())
    assert registered["vae"]["name"] == "vae-mnist" and registered["vae"]["registered"]
    assert found["candidate"] == "('vae-mnist', '1')"


def test_evaluate_by_hand_answers_from_current_reports_and_recomputes_others(pipeline_copy):
    """As dvc.yaml runs them, `vaectl evaluate` (and ood, holes) by hand prints the results
    from the reports `dvc status` vouches for, logging nothing; a report that is not what
    dvc.lock records (here: edited numbers) is evaluated again, with the reason, in a run
    tagged as by hand."""
    root, env, _ = pipeline_copy
    metrics = root / "reports" / "metrics.json"
    written = metrics.read_text()
    answered = sh("vaectl", "evaluate", "--baseline", "ae", cwd=root, env=env)
    assert "evaluate is up to date with dvc.lock" in answered and "VAE vs AE" in answered
    assert "MLflow run" not in answered
    for command, shown in (("ood", "test split vs noise"), ("holes", "grid.unrecognised: VAE")):
        answered = sh("vaectl", command, cwd=root, env=env)  # as dvc.yaml runs them
        assert f"{command} is up to date with dvc.lock" in answered and shown in answered
    report = json.loads(written)
    report["vae"]["iw_nll"] = 1.0  # a better number than the models earned
    metrics.write_text(json.dumps(report))
    redone = sh("vaectl", "evaluate", "--baseline", "ae", cwd=root, env=env)
    assert "not up to date with dvc.lock (changed outs reports/metrics.json (modified))" in redone
    assert metrics.read_text() == written and "MLflow run" in redone
    assert "up to date" in sh("dvc", "status", "evaluate", cwd=root, env=env)
    invoked = (
        "[r.data.tags['vaectl.invoked_by'] for r in "
        "tracking.find_runs('vaectl', \"tags.`vaectl.kind` = 'evaluate'\")]"
    )
    assert queried(root, env, invoked=invoked)["invoked"] == "['by hand', 'dvc repro']"


def test_mlflow_itself_finds_the_registered_model_from_the_repo_root(pipeline_copy):
    """The store is where MLflow 3 looks when nothing is set: its own pyfunc loader, in a
    shell with no MLFLOW_TRACKING_URI, resolves the alias and scores an image."""
    root, env, _ = pipeline_copy
    code = (
        "import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/vae-mnist@candidate'); "
        "out = m.predict(np.zeros((2, 784), np.float32), params={'mode': 'reconstruct'}); "
        "print(mlflow.get_tracking_uri(), np.asarray(out).shape)"
    )
    done = sh(sys.executable, "-c", code, cwd=root, env=env).strip().splitlines()[-1]
    assert done == f"sqlite:///{root / 'mlflow.db'} (2, 784)"


def test_a_store_in_the_former_place_is_refused_with_the_command_that_moves_it(pipeline_copy, tmp_path):
    root, env, _ = pipeline_copy
    (tmp_path / "mlruns").mkdir()
    shutil.copy2(root / "mlflow.db", tmp_path / "mlruns" / "mlflow.db")
    done = subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", "vae-mnist@candidate", "--dest", "d"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "run `mv mlruns/mlflow.db mlflow.db`" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


# Other machines, simulated on this one: the kernels ATen, MKL and numpy would pick on a CPU
# with fewer instruction sets, and another thread count. The lock was made with this machine's
# own picks (AVX-512 where it has it), so each pin of numerics.mode portable that is missing
# shows up as a changed dvc.lock under at least one of them, whatever this CPU is.
OTHER_CPUS = {
    "avx2-cpu-2-threads": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512_SKX",
        "OMP_NUM_THREADS": "2",
    },
    "sse4-cpu-1-thread": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "NPY_DISABLE_CPU_FEATURES": NUMPY_DISPATCH_TARGETS,
        "OMP_NUM_THREADS": "1",
    },
}


@pytest.fixture(scope="module")
def clones_on_other_cpus(pipeline_copy, tmp_path_factory):
    """A fresh clone for each simulated CPU, reproduced with `dvc repro` (one stage at a
    time, where the lock was made two at a time), the clones side by side: {cpu: (clone, env,
    the repro's exit code and output)}."""
    root, env, _ = pipeline_copy
    started = {}
    for cpu, pins in OTHER_CPUS.items():
        clone, clone_env = fresh_clone(root, tmp_path_factory.mktemp(cpu) / "clone", {**env, **pins})
        assert not (clone / "data" / "prepared").exists() and not (clone / "mlflow.db").exists()
        run = subprocess.Popen(  # every stage runs: no cache, no data, no MLflow store
            ["dvc", "repro"],
            cwd=clone,
            env=clone_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started[cpu] = (clone, clone_env, run)
    return {cpu: (clone, e, run.wait(), run.communicate()[0]) for cpu, (clone, e, run) in started.items()}


@pytest.mark.parametrize("cpu", sorted(OTHER_CPUS))
def test_a_fresh_clone_reproduces_the_lock_byte_for_byte(clones_on_other_cpus, cpu):
    clone, env, code, output = clones_on_other_cpus[cpu]
    assert code == 0, output[-3000:]
    assert sh("git", "status", "--porcelain", cwd=clone, env=env) == ""
    assert "up to date" in sh("dvc", "status", cwd=clone, env=env)


def test_a_clone_that_pulls_from_the_remote_is_up_to_date(pipeline_copy, tmp_path):
    root, env, _ = pipeline_copy
    venv = Path(sys.executable).parent.parent
    remote = tmp_path / "remote"
    # the make target as users run it, pointed at this interpreter's venv (never reinstalled)
    make_remote = ["make", "-o", str(venv / ".installed"), "remote", f"VENV={venv}", f"DVC_REMOTE={remote}"]
    sh(*make_remote, cwd=root, env=env)
    assert "pushed" in sh("dvc", "push", cwd=root, env=env)
    clone, env = fresh_clone(root, tmp_path / "clone", env)
    sh(*make_remote, cwd=clone, env=env)
    sh("dvc", "pull", cwd=clone, env=env)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone, env=env)
    tracked = [
        "data/prepared/train.npz",
        "models/vae/best.pt",
        "export/vae/reconstruct.onnx",
        "reports/figures",
        "reports/data_docs",
    ]
    assert {n: _digest(clone / n) for n in tracked} == {n: _digest(root / n) for n in tracked}
    assert sh("git", "status", "--porcelain", cwd=clone, env=env) == ""


VERSIONS = "sorted(v.version for v in registry_client.client().search_model_versions(\"name='vae-mnist'\"))"


def test_second_repro_is_a_no_op_and_a_latent_size_experiment_retrains_only_the_vae(pipeline_copy):
    root, env, _ = pipeline_copy
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=root, env=env)
    log = sh("dvc", "exp", "run", "-S", "train.vae.latent_dim=3", "-n", "tiny-latent3", cwd=root, env=env)
    assert "Running stage 'train@vae'" in log and "Running stage 'evaluate'" in log
    for untouched in ("fetch", "validate", "train@ae", "train2d-vae", "train2d-ae", "classifier", "holes"):
        assert f"Running stage '{untouched}'" not in log
    assert "vae-mnist: not registered: DVC experiments register nothing" in log
    assert "tiny-latent3" in sh("dvc", "exp", "show", "--json", cwd=root, env=env)
    table = sh("vaectl", "exps", cwd=root, env=env)  # `make exps`: 120 columns, the change named
    assert "tiny-latent3" in table and "train.vae.latent_dim=3" in table
    assert max(len(line) for line in table.splitlines()) <= 120
    found = queried(
        root,
        env,
        runs="len(tracking.find_runs('vaectl', \"tags.`dvc.exp_name` = 'tiny-latent3'\"))",
        versions=VERSIONS,
    )
    # its train-vae, evaluate, ood and both export runs carry its name; the 2-D VAE does not
    # depend on train.vae.latent_dim (--latent-dim 2 replaces it); it registered nothing
    assert found == {"runs": "5", "versions": "[1]"}


def _digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_study_runs_the_grid_as_dvc_experiments_and_summarises_across_seeds(pipeline_copy):
    root, env, _ = pipeline_copy
    sh("git", "checkout", "--", ".", cwd=root, env=env)  # undo what an earlier `dvc exp run` applied
    out = sh("vaectl", "study", "--jobs", "2", cwd=root, env=env)
    assert "[4/4]" in out
    names = set(sh("dvc", "exp", "list", "--name-only", cwd=root, env=env).split())
    assert {f"study-b{b}-z2-s{s}" for b in (1, 2) for s in (0, 1)} <= names
    doc = json.loads((root / "reports" / "study" / "study.json").read_text())
    rows = {(r["beta"], r["latent_dim"]): r for r in doc["settings"]}
    assert list(rows) == [(1.0, 2), (2.0, 2)] and all(r["seeds"] == [0, 1] for r in rows.values())
    assert rows[(1.0, 2)]["metrics"]["vae.active_units"]["mean"] <= 2
    nll = rows[(1.0, 2)]["metrics"]["vae.iw_nll"]
    assert nll["seeds"][0] != nll["seeds"][1] and nll["ci"][0] < nll["mean"] < nll["ci"][1]
    # beta is the VAE's alone: both beta settings of a seed share one AE (DVC's run cache)
    assert (
        rows[(1.0, 2)]["metrics"]["recon_bce.ae"]["seeds"]
        == rows[(2.0, 2)]["metrics"]["recon_bce.ae"]["seeds"]
    )
    elbo = {s: rows[s]["metrics"]["vae.neg_elbo"]["seeds"] for s in [(1.0, 2), (2.0, 2)]}
    assert elbo[(1.0, 2)] != elbo[(2.0, 2)]
    assert sorted(p.name for p in (root / "reports" / "study").iterdir()) == [
        "beta.png",  # one latent size: no latent plot
        "study.json",
        "study.md",
    ]
    vae_runs = "len(tracking.find_runs('vaectl', \"attributes.run_name = 'train-vae'\"))"
    study_run = "tracking.find_runs('vaectl', \"tags.`vaectl.kind` = 'study'\")[0].info.run_id"
    found = queried(
        root,
        env,
        versions=VERSIONS,
        children="sorted(r.data.params['study.beta'] for r in tracking.find_runs("
        f"'vaectl', \"tags.`mlflow.parentRunId` = '\" + {study_run} + \"'\"))",
        vae_runs=vae_runs,
    )
    assert found["versions"] == "[1]"
    assert found["children"] == "['1.0', '1.0', '2.0', '2.0']"
    # trained again one at a time (no run cache to restore from): the same bytes as two at once
    before = (root / "reports" / "study" / "study.json").read_bytes()
    shutil.rmtree(root / ".dvc" / "cache" / "runs")
    sh("vaectl", "study", "--jobs", "1", cwd=root, env=env)
    # three VAEs trained again; the fourth trial (beta 1, seed 0) is the baseline's own VAE
    assert int(queried(root, env, vae_runs=vae_runs)["vae_runs"]) == int(found["vae_runs"]) + 3
    assert (root / "reports" / "study" / "study.json").read_bytes() == before
