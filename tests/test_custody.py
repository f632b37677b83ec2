"""The chain of custody from evaluation to the registry, tried as someone able to write files
in the workspace would (the threat model in docs/reliability.md): forged metrics,
swapped or rehashed exports, interrupted and concurrent stages. Evaluate's own refusals of
forged checkpoints, summaries and judges are in test_evaluate.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from vaectl import UserError, registry
from vaectl import export as export_stage
from vaectl.files import sha256_file
from vaectl.params import RegistryParams

from .tiny import TINY_DEPLOY, registered_on_a_local_store


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Trained, evaluated, exported and registered once; each test restores what it forges."""
    root = tmp_path_factory.mktemp("custody")
    with registered_on_a_local_store(root) as registered:  # the CLI's params: the same models
        params = {**TINY_DEPLOY, "registry": {"require_smoother_than_baseline": False}}
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        yield registered


@pytest.fixture
def restored(chain):
    """The workspace files as they were before the test, put back after it."""
    root = chain["root"]
    saved = root.parent / f"{root.name}-saved"
    shutil.rmtree(saved, ignore_errors=True)
    for folder in ("export", "reports", "models"):
        shutil.copytree(root / folder, saved / folder)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in chain["env"].items():
            mp.setenv(key, value)
        yield root
    for folder in ("export", "reports", "models"):
        shutil.rmtree(root / folder)
        shutil.copytree(saved / folder, root / folder)


def vaectl(root, env, *args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "vaectl", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def forge_metrics(root):
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    metrics["vae"]["iw_nll"], metrics["ae"]["recon_bce"] = 1.0, 1.0
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))


def register(root, prepared):
    return registry.register(
        RegistryParams(require_smoother_than_baseline=False),
        root / "export",
        prepared,
        "vaectl",
        root / "reports" / "registry.json",
    )


def test_export_refuses_metrics_no_evaluate_run_wrote(chain, restored):
    forge_metrics(restored)
    before = (restored / "export" / "vae" / "model_card.json").read_bytes()
    out = vaectl(
        restored,
        chain["env"],
        "export",
        "--prepared",
        str(chain["prepared"]),
        "--metrics",
        str(restored / "reports" / "metrics.json"),
        "--out",
        str(restored / "export"),
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "metrics.json (sha256" in out.stderr and "is not what any `vaectl evaluate` run" in out.stderr
    assert (restored / "export" / "vae" / "model_card.json").read_bytes() == before


def test_register_promotes_on_the_numbers_the_evaluate_run_recorded_not_a_local_file(chain, restored):
    from vaectl.tracking import registry_client

    recorded = json.loads((restored / "reports" / "metrics.json").read_text())
    forge_metrics(restored)  # register does not read it: the export says which evaluate run counts
    result = register(restored, chain["prepared"])
    version = registry_client.client().get_model_version("vae-mnist", result["vae"]["version"])
    assert float(version.tags["metric.iw_nll"]) == pytest.approx(recorded["vae"]["iw_nll"])
    assert not result["ae"]["promoted"] and "recon_bce 1 " not in result["ae"]["reason"]


def test_a_genuine_checkpoint_of_another_model_name_is_refused(chain, restored):
    """models/vae-2d's files copied over models/vae are a real training run's, of the same kind,
    but not of the model named vae: custody binds a checkpoint to its name."""
    from vaectl.checkpoints import load_trained
    from vaectl.data import manifest_sha256

    data_sha = manifest_sha256(chain["prepared"])
    load_trained(restored / "models" / "vae", "vae", data_sha, "vaectl")  # its own name: accepted
    shutil.copytree(restored / "models" / "vae", restored / "models" / "vae-2d")
    with pytest.raises(UserError, match=r"is not what any `vaectl train` run of vae named vae-2d"):
        load_trained(restored / "models" / "vae-2d", "vae", data_sha, "vaectl")
    shutil.rmtree(restored / "models" / "vae-2d")


def swap_decoders_and_rehash(root):
    vae, ae = root / "export" / "vae", root / "export" / "ae"
    shutil.copyfile(ae / "decoder.pt2", vae / "decoder.pt2")
    listed = json.loads((vae / "checksums.json").read_text())
    listed["decoder.pt2"] = sha256_file(vae / "decoder.pt2")
    (vae / "checksums.json").write_text(json.dumps(listed))


def swap_exports(root):
    os.rename(root / "export" / "vae", root / "export" / "tmp")
    os.rename(root / "export" / "ae", root / "export" / "vae")
    os.rename(root / "export" / "tmp", root / "export" / "ae")


EXPORT_FORGERIES = {
    "checksums.json emptied": (
        lambda r: (r / "export" / "vae" / "checksums.json").write_text("{}"),
        r"vae/checksums.json \(sha256 .*\) is not what any `vaectl export` run",
    ),
    "the AE's decoder under a rehashed checksums.json": (
        swap_decoders_and_rehash,
        r"vae/checksums.json \(sha256 .*\) is not what any `vaectl export` run",
    ),
    "the VAE's and the AE's export folders swapped": (
        swap_exports,
        r"vae/checksums.json \(sha256 .*\) is not what any `vaectl export` run of export-vae",
    ),
    "a file added that checksums.json does not list": (
        lambda r: (r / "export" / "vae" / "extra.onnx").write_bytes(b"x"),
        r"checksums.json does not list extra.onnx",
    ),
    "checksums.json not JSON": (
        lambda r: (r / "export" / "ae" / "checksums.json").write_text("{"),
        r"ae/checksums.json \(sha256 .*\) is not what any `vaectl export` run",
    ),
}


@pytest.mark.parametrize("forgery", EXPORT_FORGERIES)
def test_register_refuses_an_export_its_export_run_did_not_record(chain, restored, forgery):
    from vaectl.tracking import registry_client

    versions = registry_client.complete_versions("vae-mnist")
    plant, refusal = EXPORT_FORGERIES[forgery]
    plant(restored)
    with pytest.raises(UserError, match=refusal):
        register(restored, chain["prepared"])
    assert registry_client.complete_versions("vae-mnist") == versions  # nothing registered


def test_an_interrupted_registration_leaves_no_version_without_its_checksums(chain, restored, monkeypatch):
    from vaectl import tracking
    from vaectl.tracking import registry_client

    before = [int(v.version) for v in registry_client.client().search_model_versions("name='vae-mnist'")]
    candidate = registry_client.resolve_model("vae-mnist@candidate")

    def killed(root):
        raise KeyboardInterrupt  # SIGTERM lands after the version exists, before its bundle tag

    monkeypatch.setattr(registry_client, "tree_listing", killed)
    with pytest.raises(KeyboardInterrupt):
        register(restored, chain["prepared"])
    after = [int(v.version) for v in registry_client.client().search_model_versions("name='vae-mnist'")]
    assert sorted(after) == sorted(before)  # the half version was deleted
    assert registry_client.resolve_model("vae-mnist@candidate") == candidate
    assert tracking.find_runs("vaectl", "tags.`vaectl.kind` = 'register-vae'")[0].info.status == "KILLED"


def test_what_register_uploads_is_what_it_verified(chain, restored, monkeypatch):
    """A score.json changed in export/ after register has checked the exports is not what gets
    registered: register verifies and uploads one private copy."""
    from vaectl.tracking import registry_client

    genuine = (restored / "export" / "ae" / "score.json").read_bytes()
    checked = registry.exported_model

    def check_then_tamper(export_dir, kind, experiment):
        found = checked(export_dir, kind, experiment)
        (restored / "export" / "ae" / "score.json").write_text('{"threshold": 1e9}')
        return found

    monkeypatch.setattr(registry, "exported_model", check_then_tamper)
    result = register(restored, chain["prepared"])
    stored = registry_client.download_model("ae-mnist", result["ae"]["version"], restored / "stored")
    assert (stored / "artifacts" / "score.json").read_bytes() == genuine


def test_a_copy_changed_between_check_and_upload_is_caught_after_the_upload(chain, restored, monkeypatch):
    from vaectl.tracking import registry_client

    before = registry_client.complete_versions("ae-mnist"), registry_client.complete_versions("vae-mnist")
    checked = registry.exported_model

    def check_then_tamper_the_copy(export_dir, kind, experiment):
        found = checked(export_dir, kind, experiment)
        if kind == "ae":
            (export_dir / "score.json").write_text('{"threshold": 1e9}')
        return found

    monkeypatch.setattr(registry, "exported_model", check_then_tamper_the_copy)
    with pytest.raises(UserError, match="the stored score.json is not the file that was verified"):
        register(restored, chain["prepared"])
    after = registry_client.complete_versions("ae-mnist"), registry_client.complete_versions("vae-mnist")
    assert after == before  # the VAE registered first went with the AE: a pair lands whole


def test_a_registration_killed_before_its_checksums_is_cleaned_by_the_next(chain, restored):
    """kill -9 runs no clean-up: the next register deletes the half version (created with its
    register run's id, no bundle checksums) and ends that run; other versions are untouched."""
    from vaectl import tracking
    from vaectl.tracking import registry_client

    c = registry_client.client()
    source = c.get_model_version("ae-mnist", registry_client.complete_versions("ae-mnist")[-1]).source
    with tracking.start_run("vaectl", "register-ae-mnist", {"vaectl.kind": "register-ae"}) as run:
        run_id = run.run_id
    c.update_run(run_id, status="RUNNING")  # as a killed process leaves it
    half = c.create_model_version("ae-mnist", source, tags={registry_client.LISTING_RUN_TAG: run_id})
    foreign = c.create_model_version("ae-mnist", source)  # registered by other means: not ours
    register(restored, chain["prepared"])
    left = {v.version for v in c.search_model_versions("name='ae-mnist'")}
    assert half.version not in left and foreign.version in left
    assert tracking.run_status(run_id) == "KILLED"
    c.delete_model_version("ae-mnist", foreign.version)


def test_two_registrations_at_once_leave_candidate_on_the_newest_version(chain, restored):
    from vaectl.tracking import registry_client

    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaectl",
                "register",
                "--prepared",
                str(chain["prepared"]),
                "--exported",
                str(restored / "export"),
                "--report",
                str(restored / f"r{i}.json"),
            ],
            cwd=restored,
            env=chain["env"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    versions = registry_client.client().search_model_versions("name='vae-mnist'")
    assert all(registry_client.BUNDLE_TAG in v.tags for v in versions)
    newest = str(max(int(v.version) for v in versions))
    assert registry_client.resolve_model("vae-mnist@candidate") == ("vae-mnist", newest)


def stopped_midway(root, env, prepared):
    """A `vaectl export` frozen (SIGSTOP) while its VAE folder is staged with a graph in it and
    before its checksums.json, which is written last, just before the swap; None if it got
    past that before it was frozen (a loaded machine), so that the caller tries again."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaectl", "export", "--prepared", str(prepared)]
        + ["--metrics", str(root / "reports" / "metrics.json"), "--out", str(root / "export")],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list((root / "export").glob(".vae.*.tmp/vae/*.pt2")) and proc.poll() is None:
        assert time.time() < deadline, "export staged nothing in 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    staged = list((root / "export").glob(".vae.*.tmp/vae"))
    if staged and list(staged[0].glob("*.pt2")) and not (staged[0] / "checksums.json").exists():
        return proc
    proc.kill()
    proc.communicate()
    return None


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_export_leaves_the_previous_export_and_no_half_folder(chain, restored, how):
    saved = restored.parent / "export-before-kill"
    shutil.rmtree(saved, ignore_errors=True)
    shutil.copytree(restored / "export", saved)
    before = {
        p.relative_to(restored): p.read_bytes() for p in (restored / "export").rglob("*") if p.is_file()
    }
    for _ in range(5):
        proc = stopped_midway(restored, chain["env"], chain["prepared"])
        if proc is not None:
            break
        shutil.rmtree(restored / "export")
        shutil.copytree(saved, restored / "export")
    assert proc is not None, "the export finished before it could be stopped, five times"
    proc.send_signal(how)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    after = {
        p.relative_to(restored): p.read_bytes()
        for p in (restored / "export").rglob("*")
        if p.is_file() and ".tmp" not in str(p)
    }
    assert after == before
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("interrupted: `vaectl export` stopped")
        assert not list((restored / "export").glob(".*.tmp"))
    else:  # kill -9 runs no clean-up; the next export removes what it left
        export_stage.run(
            ("vae",),
            chain["prepared"],
            restored / "models",
            restored / "reports" / "metrics.json",
            restored / "export",
            "vaectl",
        )
        assert not list((restored / "export").glob(".*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", r"out.json is not valid JSON \(.*\); it is written by `vaectl export`: run it again"),
        (
            '{"model": "vae"}',
            r"out.json is malformed \(no checkpoint_sha256\); it is written by `vaectl export`",
        ),
        ("[1, 2]", r"out.json is malformed \(a JSON list, not a dict\)"),
        (b"\xff\xfe", r"out.json is not valid JSON"),
    ],
)
def test_a_malformed_stage_output_is_one_line_naming_the_file_and_its_writer(tmp_path, content, message):
    from vaectl.files import read_json

    path = tmp_path / "out.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message):
        read_json(path, "vaectl export", ("model", "checkpoint_sha256"))
