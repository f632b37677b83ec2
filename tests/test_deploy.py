"""Export parity, registry (promotion both ways), pull in a fresh process, pyfunc input
checks, and a serve smoke test on loopback."""

import bz2
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vaectl import UserError, registry
from vaectl import export as export_stage
from vaectl.params import RegistryParams

from .conftest import free_port, wait_until_up
from .tiny import net, registered_on_a_local_store

pytestmark = pytest.mark.e2e  # fresh processes and a model server

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def deployed_env(deployed):
    """This process in the deployment's environment (its tracking store), in its folder."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in deployed["env"].items():
            mp.setenv(k, v)
        mp.chdir(deployed["root"])
        yield mp


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """`train_to_registry` once for the whole module, on a local sqlite store."""
    with registered_on_a_local_store(tmp_path_factory.mktemp("deploy")) as registered:
        yield registered


def test_export_parity_files_and_dynamic_batch(deployed):
    import onnxruntime

    root = deployed["root"]
    for kind in ("vae", "ae"):
        assert (
            max(deployed["parities"][kind].values())
            < deployed["cards"][kind]["onnx_parity_max_abs_diff_below"]
            == 1e-4
        )
        files = json.loads((root / "export" / kind / "checksums.json").read_text())
        assert {
            "encoder.onnx",
            "decoder.pt2",
            "reconstruct.onnx",
            "score.pt2",
            "score.json",
            "model_card.md",
        } <= set(files)
    archives = list((root / "export").glob("*/*.pt2"))
    assert len(archives) == 8  # encoder, decoder, reconstruct, score; for each model
    for archive in archives:  # no trace of where it was built, no test images
        with zipfile.ZipFile(archive) as z:
            assert not any(
                b"site-packages" in z.read(n)
                or str(REPO).encode() in z.read(n)
                or str(root).encode() in z.read(n)
                for n in z.namelist()
            )
            assert not any(
                n.endswith("sample_inputs/model.pt") and len(z.read(n)) > 2000 for n in z.namelist()
            )
    session = onnxruntime.InferenceSession(str(root / "export" / "vae" / "reconstruct.onnx"))
    x = np.random.default_rng(0).random((7, 784), dtype=np.float32)  # not the traced batch size
    program = torch.export.load(root / "export" / "vae" / "reconstruct.pt2").module()
    with torch.no_grad():
        expected = program(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=1e-5)


def test_first_registration_promotes_and_the_same_model_again_does_not(deployed):
    first = deployed["first"]
    assert first["vae"]["promoted"] and first["vae"]["version"] == "1"
    with deployed_env(deployed):
        root = deployed["root"]
        again = registry.register(
            deployed["rule"],
            root / "export",
            deployed["prepared"],
            "vaectl",
            root / "reports" / "registry2.json",
        )
        from vaectl.tracking import registry_client

        assert again["vae"]["version"] == "2" and not again["vae"]["promoted"]
        # the DVC output holds what the inputs decide: the store's version 2 and its refusal to
        # promote leave its bytes as version 1 wrote them (no dvc.lock churn on a shared server)
        written = [(root / "reports" / name).read_bytes() for name in ("registry.json", "registry2.json")]
        assert written[0] == written[1] and b'"version"' not in written[0]
        assert registry_client.resolve_model("vae-mnist@champion") == ("vae-mnist", "1")
        assert registry_client.resolve_model("vae-mnist@candidate") == ("vae-mnist", "2")
        described = {v: registry_client.client().get_model_version("vae-mnist", v) for v in ("1", "2")}
        assert "@champion: promoted: no champion yet" in described["1"].description
        assert "@champion: not promoted: iw_nll" in described["2"].description
        assert "- IW-NLL (`iw_nll`): " in described["2"].description  # the headline, with its unit
        assert "nats" in described["2"].description and "Training run: " in described["2"].description
        assert "dvc_exp_name" not in described["2"].tags  # no empty tags outside a DVC experiment
        # lineage, MLflow 3's way: the version's Source Run is the training run, which logged
        # the checkpoint as a LoggedModel and lists the registered one among its outputs; the
        # register run, the logged models and evaluate's test numbers point at each other
        from vaectl import tracking

        c = tracking.client()
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
        version = described["1"]
        training = c.get_run(version.run_id)
        assert training.info.run_name == "train-vae"
        assert version.tags["training_run_id"] == version.run_id
        data_name = json.loads((deployed["prepared"] / "manifest.json").read_text())["source"]["name"]
        assert {d.dataset.name for d in training.inputs.dataset_inputs} == {f"{data_name}-train"}
        registered = c.get_logged_model(version.source.removeprefix("models:/"))
        assert registered.name == "vae-mnist" and registered.source_run_id == version.run_id
        assert registered.params["binarize"] == deployed["cards"]["vae"]["binarize"]
        assert registered.params["latent_dim"] == str(deployed["cards"]["vae"]["architecture"]["latent_dim"])
        test_numbers = {m.key: (m.value, m.dataset_name) for m in registered.metrics}
        assert test_numbers["test.iw_nll"] == (pytest.approx(metrics["vae"]["iw_nll"]), f"{data_name}-test")
        checkpoint = c.get_logged_model(training.data.tags["vaectl.logged_model_id"])
        assert checkpoint.name == "vae" and checkpoint.source_run_id == version.run_id
        assert checkpoint.tags["vaectl.checkpoint_sha256"] == version.tags["checkpoint_sha256"]
        evaluated = {m.key: (m.value, m.dataset_name) for m in checkpoint.metrics}
        assert evaluated["test.iw_nll"] == test_numbers["test.iw_nll"]  # evaluate's, on the Models tab
        assert {o.model_id for o in training.outputs.model_outputs} >= {
            checkpoint.model_id,
            registered.model_id,
        }
        register = c.get_run(version.tags["register_run_id"])
        assert register.data.metrics["test.iw_nll"] == pytest.approx(metrics["vae"]["iw_nll"])
        evaluate_id = tracking.find_runs("vaectl", "tags.`vaectl.kind` = 'evaluate'")[0].info.run_id
        assert register.data.tags["vaectl.evaluate_run_id"] == evaluate_id == version.tags["evaluate_run_id"]
        assert (
            f"Evaluate run (VAE-vs-AE table with intervals, figures, report page): {evaluate_id}"
            in version.description
        )
        # a version row stays short: a few headline numbers, the checksums as one digest
        assert sorted(k for k in version.tags if k.startswith("metric.")) == [
            "metric.active_units",
            "metric.iw_nll",
            "metric.neg_elbo",
            "metric.recon_bce",
        ]
        assert len(version.tags["bundle_sha256"]) == 64


def test_inside_a_dvc_experiment_register_checks_the_exports_and_registers_nothing(deployed, tmp_path):
    from vaectl.tracking import registry_client

    with deployed_env(deployed) as mp:
        mp.setenv("DVC_EXP_NAME", "latent8")
        root = deployed["root"]
        before = sorted(v.version for v in registry_client.client().search_model_versions("name='vae-mnist'"))
        result = registry.register(
            deployed["rule"], root / "export", deployed["prepared"], "vaectl", tmp_path / "registry.json"
        )
        assert result["vae"]["version"] is None
        assert "DVC experiments register nothing" in result["vae"]["reason"]
        after = sorted(v.version for v in registry_client.client().search_model_versions("name='vae-mnist'"))
        assert after == before
        (root / "export" / "vae" / "extra.onnx").write_bytes(b"x")  # a broken export still fails
        try:
            with pytest.raises(UserError, match="does not list extra.onnx"):
                registry.register(
                    deployed["rule"],
                    root / "export",
                    deployed["prepared"],
                    "vaectl",
                    tmp_path / "registry.json",
                )
        finally:
            (root / "export" / "vae" / "extra.onnx").unlink()


@pytest.mark.parametrize(
    "value, champion, smooth_ci, require_smooth, promote",
    [
        (100.0, None, [0.8, 0.9], True, True),  # no champion yet
        (99.0, 100.0, [0.8, 0.9], True, True),  # better
        (100.0, 100.0, [0.8, 0.9], True, False),  # not strictly better
        (101.0, 100.0, [0.8, 0.9], True, False),  # worse
        (90.0, 100.0, [0.9, 1.02], True, False),  # better NLL, but not significantly smoother than the AE
        (90.0, 100.0, [0.992, 0.999], True, False),  # significantly, but within the margin: equivalent
        (90.0, 100.0, [1.1, 1.2], True, False),  # better NLL but rougher interpolation than the AE
        (90.0, 100.0, [1.1, 1.2], False, True),  # ... which is allowed when the rule says so
    ],
)
def test_promotion_rule_both_ways(value, champion, smooth_ci, require_smooth, promote):
    equivalent = 1 / 1.05 < smooth_ci[0] and smooth_ci[1] < 1.05
    verdict = (
        "equivalent"
        if equivalent
        else "better"
        if smooth_ci[1] < 1
        else "worse"
        if smooth_ci[0] > 1
        else "inconclusive"
    )
    metrics = {
        "vae": {"iw_nll": value},
        "comparison": {
            "diff_class.ppl_normalized": {
                "ratio": sum(smooth_ci) / 2,
                "ratio_ci": smooth_ci,
                "verdict": verdict,
                "margin": "VAE/AE within ×1.05",
            }
        },
    }
    rule = RegistryParams(require_smoother_than_baseline=require_smooth)
    decision = registry.promotion_decision("vae", metrics, champion, rule)
    assert decision.promote is promote
    if require_smooth and verdict != "better":  # the message names the verdict the rule read
        assert registry.verdict_word(metrics["comparison"]["diff_class.ppl_normalized"]) in decision.reason
    improved = RegistryParams(min_improvement=2.0, require_smoother_than_baseline=False)
    assert not registry.promotion_decision(
        "vae", {**metrics, "vae": {"iw_nll": 99.0}}, 100.0, improved
    ).promote


def pull_champion(deployed: dict, dest: str) -> subprocess.CompletedProcess:
    """`vaectl pull vae-mnist@champion --dest ROOT/dest` in a fresh process."""
    root = deployed["root"]
    return subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", "vae-mnist@champion", "--dest", str(root / dest)],
        cwd=root,
        env=deployed["env"],
        capture_output=True,
        text=True,
    )


def test_pull_in_a_fresh_process_gives_the_trained_models_outputs(deployed):
    root = deployed["root"]
    dest = root / "bundle"
    pulled = pull_champion(deployed, "bundle")
    assert pulled.returncode == 0, pulled.stderr
    assert "files verified" in pulled.stdout and (dest / "artifacts" / "decoder.onnx").exists()
    steps = [line for line in pulled.stderr.splitlines() if line.startswith("pull: ")]
    assert steps[0].startswith("pull: fetching vae-mnist v") and "(vae-mnist@champion)" in steps[0]
    assert steps[1].startswith("pull: loading vae-mnist v") and len(steps) == 2, pulled.stderr
    x = np.random.default_rng(1).random((5, 784), dtype=np.float32)
    np.save(root / "x.npy", x)
    code = (
        "import mlflow, numpy as np, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); "
        "np.save(sys.argv[2], m.predict(np.load(sys.argv[3])))"
    )
    for uri, out in (("models:/vae-mnist@champion", "y_registry.npy"), (str(dest), "y_bundle.npy")):
        subprocess.run(
            [sys.executable, "-c", code, uri, str(root / out), str(root / "x.npy")],
            cwd=root,
            env=deployed["env"],
            check=True,
            capture_output=True,
        )
    state = torch.load(root / "models" / "vae" / "best.pt", weights_only=True)
    from vaectl.models import from_config

    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        expected = torch.sigmoid(model.decode(model.encode(torch.from_numpy(x))[0])).numpy()
    for out in ("y_registry.npy", "y_bundle.npy"):
        np.testing.assert_allclose(np.load(root / out), expected, atol=1e-6)


def test_a_bundle_changed_in_the_artifact_store_is_refused_before_it_runs(deployed):
    """A line added to the bundled code in the artifact store, or a file slipped in: pull
    compares every file with the listing the registry recorded, before loading anything."""
    root = deployed["root"]
    stored = sorted((root / "mlruns" / "artifacts").rglob("code/vaectl/tracking/pyfunc.py"))
    assert stored  # the pyfunc's own code travels in the bundle
    original = {p: p.read_bytes() for p in stored}

    def pull():
        return pull_champion(deployed, "tampered")

    try:
        for p in stored:
            p.write_bytes(original[p] + b"\nopen('/tmp/pwned', 'w')\n")
        out = pull()
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert (
            "the stored bundle differs from what was registered (changed code/vaectl/tracking/pyfunc.py)"
            in out.stderr
        )
        for p in stored:
            p.write_bytes(original[p])
            (p.parent / "extra.py").write_text("x = 1\n")
        assert "(unexpected code/vaectl/tracking/extra.py)" in pull().stderr
    finally:
        for p in stored:
            p.write_bytes(original[p])
            (p.parent / "extra.py").unlink(missing_ok=True)
    assert not (root / "tampered").exists()
    assert pull().returncode == 0


def test_bytecode_python_wrote_into_the_store_is_dropped_not_run(deployed):
    """`mlflow.pyfunc.load_model("models:/...")` on a local store imports the bundle's code in
    place, and Python leaves __pycache__ beside it there. pull takes the bundle all the same
    and drops the caches from its copy, so that the verified sources are what runs: here a
    planted .pyc that would write a file. Seen red without drop_bytecode ("unexpected
    code/vaectl/__pycache__/...")."""
    root = deployed["root"]
    caches = []
    for code in sorted((root / "mlruns" / "artifacts").rglob("code/vaectl")):
        cache = code / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "pyfunc_planted.cpython-311.pyc").write_bytes(b"open('/tmp/pwned', 'w')")
        caches.append(cache)
    assert caches
    try:
        out = pull_champion(deployed, "cached")
        assert out.returncode == 0, out.stderr
        assert not list((root / "cached").rglob("pyfunc_planted*"))
    finally:
        for cache in caches:
            (cache / "pyfunc_planted.cpython-311.pyc").unlink()


def test_a_listing_rewritten_to_match_a_changed_bundle_is_refused(deployed):
    """The bundle's checksums are an artifact of the register run; whoever rewrites that file
    in the artifact store (to cover a changed bundle) no longer matches the version's tag."""
    root = deployed["root"]
    listings = sorted((root / "mlruns" / "artifacts").rglob("bundle_sha256.json"))
    assert listings
    original = {p: p.read_bytes() for p in listings}
    try:
        for p in listings:
            p.write_text(p.read_text().replace('"MLmodel": "', '"MLmodel": "0'))
        out = pull_champion(deployed, "relisted")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "are missing or not the ones its version recorded; refusing to load it" in out.stderr
        assert not (root / "relisted").exists()
    finally:
        for p in listings:
            p.write_bytes(original[p])


@pytest.mark.parametrize(
    "ref, message",
    [
        ("gan-mnist@champion", "no registered model 'gan-mnist'; registered: ae-mnist, vae-mnist"),
        ("vae-mnist@prod", "has no alias 'prod'; aliases: @candidate"),
        ("vae-mnist/99", "has no version '99'; versions: 1"),
    ],
)
def test_unknown_names_list_what_exists(deployed, ref, message):
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", ref, "--dest", str(deployed["root"] / "x")],
        cwd=deployed["root"],
        env=deployed["env"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_pyfunc_rejects_bad_inputs_with_a_message(deployed):
    from mlflow.exceptions import MlflowException

    with deployed_env(deployed):
        from vaectl.tracking import registry_client

        model = registry_client.load_pyfunc("models:/vae-mnist@champion")
        good = np.full((2, 784), 0.5, np.float32)
        assert model.predict(good).shape == (2, 784)
        assert model.predict(good, params={"mode": "encode"}).shape == (2, 4)  # mean, log-variance
        assert model.predict(np.zeros((3, 2), np.float32), params={"mode": "decode"}).shape == (3, 784)
        sample = lambda m, seed: m.predict(good, params={"mode": "sample", "n": 5, "seed": seed})  # noqa: E731
        assert sample(model, 0).shape == (5, 784) and np.array_equal(sample(model, 0), sample(model, 0))
        assert not np.allclose(sample(model, 0), sample(model, 1))
        ae = registry_client.load_pyfunc("models:/ae-mnist@champion")
        assert sample(ae, 0).shape == (5, 784) and np.array_equal(sample(ae, 0), sample(ae, 0))
        nan = good.copy()
        nan[0, 0] = np.nan
        for bad, params, message in [
            (np.full((2, 10), 0.5, np.float32), None, "expects N x 784"),
            (nan, None, "NaN"),
            (good * 3, None, r"\[0, 1\]"),
            (good, {"mode": "explode"}, "unknown mode"),
        ]:
            with pytest.raises(MlflowException, match=message):
                model.predict(bad, params=params)
        binary = (good > 0.4).astype(np.int64)  # 0/1 images, as JSON writes them
        assert np.array_equal(model.predict(binary), model.predict(binary.astype(np.float32)))
        with pytest.raises(MlflowException, match=r"\[0, 1\]"):
            model.predict(np.full((2, 784), 255, np.uint8))
        with pytest.raises(MlflowException, match="expected numbers"):
            model.predict(np.full((2, 784), "a"))
        assert np.array_equal(model.predict(good.reshape(2, 28, 28)), model.predict(good))  # images
        assert np.array_equal(model.predict(good.astype(np.float64)), model.predict(good))


def _post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_line(path: Path, word: str, timeout_s: float = 30) -> str:
    """The first line of the file at `path` holding `word`, once it is written."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in path.read_text().splitlines() if word in line]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no line with {word!r} in {path}: {path.read_text()!r}")


@contextlib.contextmanager
def serving(deployed, *options):
    """`vaectl serve vae-mnist@champion OPTIONS` on a free loopback port, for the block; its
    stderr goes to serve-PORT.err in the deployment's root."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vaectl", "serve", "vae-mnist@champion", "--port", str(port), *options],
        cwd=deployed["root"],
        env=deployed["env"],
        stdout=subprocess.DEVNULL,
        stderr=open(deployed["root"] / f"serve-{port}.err", "w"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )
    try:
        yield port
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    # SIGTERM stops it (uvicorn shuts down cleanly) with its verified copy of the bundle removed
    assert server.returncode == 0
    assert not list(Path(tempfile.gettempdir()).glob(f"vaectl-serve-{server.pid}-*"))


def test_sigterm_while_serve_loads_the_bundle_leaves_no_copy(deployed):
    """Before uvicorn takes over SIGTERM (downloading, verifying and loading take seconds),
    the signal stops serve with one line and exit 143, its temporary copy removed."""
    server = subprocess.Popen(
        [sys.executable, "-m", "vaectl", "serve", "vae-mnist@champion", "--port", str(free_port())],
        cwd=deployed["root"],
        env=deployed["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pattern = f"vaectl-serve-{server.pid}-*"
    deadline = time.monotonic() + 120
    while not list(Path(tempfile.gettempdir()).glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.terminate()
    _, err = server.communicate(timeout=60)
    assert server.returncode == 143 and "interrupted: `vaectl serve` stopped" in err, err
    assert not list(Path(tempfile.gettempdir()).glob(pattern))


def test_serve_smoke_on_loopback(deployed):
    with serving(deployed, "--max-body", "100000", "--max-samples", "50") as port:
        wait_until_up(f"http://127.0.0.1:{port}/ping")
        said = wait_for_line(deployed["root"] / f"serve-{port}.err", "listening")
        assert said.startswith("serve: vae-mnist v") and "n up to 50" in said
        assert f" listening on http://127.0.0.1:{port}/invocations " in said
        status, body = _post(port, json.dumps({"inputs": [[0.5] * 784]}).encode())
        assert status == 200 and np.array(body["predictions"]).shape == (1, 784)
        for bad, message in [
            (b"{not json", "JSON"),
            (json.dumps({"inputs": [[0.5, 0.2]]}).encode(), "expects N x 784"),
            (b'{"inputs": [[NaN, 0.5]]}', ""),
        ]:
            status, body = _post(port, bad)
            assert 400 <= status < 500 and message in body["message"]

        def sample(**p):  # sampling takes no input
            return _post(port, json.dumps({"params": {"mode": "sample", **p}}).encode())

        assert sample(n=50)[0] == 200 and len(sample(n=50)[1]["predictions"]) == 50
        with_input = {"inputs": [[0.5] * 784], "params": {"mode": "sample", "n": 3, "seed": 7}}
        assert _post(port, json.dumps(with_input).encode())[1] == sample(n=3, seed=7)[1]
        bound = "n must be between 1 and 50 (VAECTL_SERVE_MAX_SAMPLES), got"
        for params, message in [
            ({"n": 20000}, f"{bound} 20000"),
            ({"n": -5}, f"{bound} -5"),
            ({"seed": -1}, "seed must be >= 0, got -1"),
        ]:
            assert sample(**params) == (400, {"error_code": "BAD_REQUEST", "message": message})
        status, body = _post(port, json.dumps({"inputs": [[0.123456] * 700]}).encode())
        assert status == 400 and "expects N x 784" in body["message"]
        assert "0.123456" not in body["message"] and len(body["message"]) <= 501  # no echo of the input
        big = json.dumps({"inputs": [[0.5] * 784] * 40}).encode()  # ~160 KB
        assert _post(port, big)[0] == 413
        chunked = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # no Content-Length
        chunked.request(
            "POST",
            "/invocations",
            body=iter([big[:60000], big[60000:]]),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        reply = chunked.getresponse()
        assert reply.status == 413 and "larger than 100000 bytes" in json.loads(reply.read())["message"]
        chunked.close()
        status, _ = _post(port, json.dumps({"inputs": [[0.1] * 784]}).encode())
        assert status == 200  # still up after the bad requests
        status, _ = _post(port, json.dumps({"inputs": [[0] * 392 + [1] * 392]}).encode())
        assert status == 200  # integer pixels: a binarised image


def _raw(port: int, data: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(data)
    return conn


def _closed_within(conn: socket.socket, seconds: float) -> bool:
    """True if the server closes `conn` within `seconds` while it trickles a byte at a time."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            conn.sendall(b"X")
            conn.settimeout(0.5)
            try:
                if conn.recv(1024) == b"":
                    return True
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def _whole_reply(conn: socket.socket) -> bytes:
    """A reply's head and its Content-Length body, which may come in separate segments."""
    conn.settimeout(30)
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
        re.search(rb"content-length: (\d+)", reply, re.I).group(1)
    ):
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def test_serve_cuts_slow_clients_and_refuses_json_it_cannot_parse(deployed):
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with serving(
        deployed,
        "--max-body",
        "1000000",
        "--max-connections",
        "6",
        "--header-timeout",
        "2",
        "--body-timeout",
        "2",
    ) as port:
        wait_until_up(f"http://127.0.0.1:{port}/ping")
        slowloris = [_raw(port, b"POST /invocations HTTP/1.1\r\nX-A: ") for _ in range(6)]
        idle = [_raw(port, b"") for _ in range(12)]  # twice the cap, held open without a request
        for _ in range(3):  # every connection is taken, and yet a request is served: idle ones go first
            assert _post(port, json.dumps({"inputs": [[0.5] * 784]}).encode())[0] == 200
        assert _closed_within(slowloris[0], 0.5)  # the longest-waiting was shed for it
        assert all(_closed_within(conn, 8) for conn in slowloris + idle)  # cut at the header deadline
        assert _post(port, json.dumps({"inputs": [[0.5] * 784]}).encode())[0] == 200
        stalled = _raw(port, head + b"Content-Length: 1000\r\n\r\n" + b'{"inputs": [[')
        reply = _whole_reply(stalled)
        assert reply.startswith(b"HTTP/1.1 408") and b"not complete within 2 s" in reply
        deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert _post(port, deep) == (
            400,
            {"error_code": "BAD_REQUEST", "message": "request body nests JSON deeper than it can be parsed"},
        )
        status, body = _post(port, b'{"inputs": [[0.123456, 0.654321 oops')
        assert status == 400 and body["message"].startswith("request body is not valid JSON")
        assert "0.123456" not in body["message"] and "oops" not in body["message"]


def test_pull_into_a_file_is_one_clear_line(deployed):
    target = deployed["root"] / "a-file"
    target.write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "vaectl", "pull", "vae-mnist@champion", "--dest", str(target)],
        cwd=deployed["root"],
        env=deployed["env"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "is a file; give a folder" in out.stderr
    assert "Traceback" not in out.stderr and target.read_text() == "keep me"


def test_predict_scores_npz_and_png_folders_through_the_verified_pyfunc(deployed):
    """`vaectl predict` in a fresh process: N x 28 x 28 uint8 in an .npz and a folder of PNGs
    give the pyfunc's reconstructions of the same images; bad input is one line, nothing written."""
    from PIL import Image

    root = deployed["root"]
    images = (np.random.default_rng(2).random((3, 28, 28)) * 255).astype(np.uint8)
    np.savez(root / "digits.npz", images=images)
    (root / "pngs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / "pngs" / f"d{i}.png")

    def vaectl(*args):
        return subprocess.run(
            [sys.executable, "-m", "vaectl", "predict", "vae-mnist@champion", *args],
            cwd=root,
            env=deployed["env"],
            capture_output=True,
            text=True,
        )

    for source, out in (("digits.npz", "a.npz"), ("pngs", "b.npz")):
        done = vaectl("--input", source, "--output", out)
        assert done.returncode == 0, done.stderr
        assert f"reconstruct of 3 rows -> {out} (output 3 x 784)" in done.stdout
    # each step on stderr as it comes: which array of the .npz, the fetch, the load, the rows
    steps = [line for line in done.stderr.splitlines() if line.startswith("predict: ")]
    assert len(steps) == 4 and steps[0].startswith("predict: fetching vae-mnist v"), done.stderr
    assert steps[0].endswith(" (vae-mnist@champion) from the registry and checking its files")
    assert steps[1] == "predict: 3 rows from 3 PNGs in pngs"
    assert steps[2].startswith("predict: loading vae-mnist v") and "files verified" in steps[2]
    assert steps[3] == "predict: reconstruct: 3/3 rows"
    a, b = np.load(root / "a.npz"), np.load(root / "b.npz")
    assert str(a["mode"]) == "reconstruct" and str(a["model"]).startswith("vae-mnist/")
    assert list(b["names"]) == ["d0.png", "d1.png", "d2.png"] and "names" not in a
    np.testing.assert_allclose(a["output"], b["output"], atol=1e-6)
    from vaectl.tracking import registry_client

    with deployed_env(deployed):
        direct = registry_client.load_pyfunc("models:/vae-mnist@champion").predict(
            images.reshape(3, 784).astype(np.float32) / 255
        )
    np.testing.assert_allclose(a["output"], direct, atol=1e-6)
    with deployed_env(deployed) as mp:  # rows scored a batch at a time: the same numbers
        mp.setattr(registry, "PREDICT_BATCH_ROWS", 2)
        said: list[str] = []
        registry.predict(
            "vae-mnist@champion", root / "digits.npz", root / "batched.npz", "reconstruct", 0, 0, said.append
        )
    assert said[1] == f"3 rows from array images of {root / 'digits.npz'}"
    assert said[-2:] == ["reconstruct: 2/3 rows", "reconstruct: 3/3 rows"]
    # equal to float rounding: a matrix product's blocking depends on the batch's rows
    np.testing.assert_allclose(np.load(root / "batched.npz")["output"], a["output"], atol=1e-6)
    np.save(root / "wide.npy", np.full((2, 10), 0.5, np.float32))
    failed = vaectl("--input", "wide.npy", "--output", "bad.npz", "--quiet")  # a user's mistake
    assert failed.returncode == 1 and "mode reconstruct expects N x 784 input" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert not (root / "bad.npz").exists()
    with deployed_env(deployed):  # the same command's other refusals, in this process
        registry.predict("vae-mnist@champion", None, root / "s.npz", "sample", 4, 0)
        assert np.load(root / "s.npz")["output"].shape == (4, 784)
        for args, message in [
            ((Path("missing.npz"), root / "bad.npz", "reconstruct"), "input not found: missing.npz"),
            ((root / "pngs", root / "bad.npz", "explode"), "unknown mode 'explode'"),
            ((None, root / "bad.npz", "encode"), "mode encode needs --input"),
            ((root / "pngs", Path("nowhere/p.npz"), "reconstruct"), "folder nowhere does not exist"),
        ]:
            with pytest.raises(UserError, match=re.escape(message)):
                registry.predict("vae-mnist@champion", *args, 0, 0)
            assert not (root / "bad.npz").exists()


def test_the_vae_ships_its_vampprior_mixture_and_the_ae_one_gaussian(deployed):
    from vaectl.models import from_config

    root = deployed["root"]
    state = torch.load(root / "models" / "vae" / "best.pt", weights_only=True)
    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        means, logvars = model.encode(state["model"]["pseudo"].clamp(0, 1))
    prior = np.load(root / "export" / "vae" / "prior.npz")
    assert prior["means"].shape == (3, 2) and prior["chols"].shape == (3, 2, 2)
    np.testing.assert_allclose(prior["means"], means.numpy(), atol=1e-6)
    stds = torch.exp(0.5 * logvars).numpy()
    np.testing.assert_allclose(prior["chols"], np.stack([np.diag(s) for s in stds]), atol=1e-6)
    assert np.load(root / "export" / "ae" / "prior.npz")["means"].shape == (1, 2)


def test_the_conv_skeleton_exports_with_parity_at_any_batch_size(tmp_path):
    """Convolutions, reshapes and the batched decoder through torch.export and ONNX: the
    graphs keep the batch dimension dynamic (a probe of 8 exported, 3 rows scored)."""
    torch.manual_seed(0)
    model = net("vae", "conv", [4, 8, 16], 3).eval()
    parity = export_stage.export_graphs(model, tmp_path, torch.rand(8, 784))
    assert max(parity.values()) < export_stage.PARITY_TOLERANCE
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    z = torch.randn(3, 3)
    with torch.no_grad():
        expected = model.mean_image(z).numpy()
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: z.numpy()})[0], expected, atol=1e-5
    )


def test_the_gated_skeleton_exports_with_parity(tmp_path):
    """The literature preset's skeleton (gated layers, clipped log-variance) through
    torch.export and ONNX: ONNX Runtime agrees with torch, a clipped output included."""
    torch.manual_seed(0)
    model = net("vae", "gated-mlp", [32, 16], 4, [-6.0, 2.0]).eval()
    with torch.no_grad():
        model.head.bias[4:] += 50.0  # every log-variance far above the clip
    probe = torch.rand(8, 784)
    parity = export_stage.export_graphs(model, tmp_path, probe)
    assert max(parity.values()) < export_stage.PARITY_TOLERANCE
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert np.all(session.run(None, {"x": probe.numpy()})[1] == 2.0)


def independent_scores(model, pixels: np.ndarray) -> np.ndarray:
    """The served score of each image recomputed from the checkpoint by torch.distributions
    (tests/test_novelty.py), on the images binarised against the served fixed uniforms."""
    from torch.distributions import Bernoulli, Independent

    from vaectl import scoring

    from .test_novelty import independent_iw_nll

    uniforms, eps = scoring.fixed_draws(model.latent_dim)
    x = torch.from_numpy((uniforms < pixels.reshape(len(pixels), 784)).astype(np.float32))
    with torch.no_grad():
        if not model.variational:
            logits = model.decode(model.encode(x)[0])
            return -Independent(Bernoulli(logits=logits), 1).log_prob(x).double().numpy()
        nll = independent_iw_nll(model, x, torch.from_numpy(eps)).double().numpy()
    bits = [8 * len(bz2.compress(np.packbits(image.astype(bool)).tobytes(), 9)) for image in x.numpy()]
    return nll - np.array(bits) * np.log(2)


def checkpoint(root: Path, kind: str):
    from vaectl.models import from_config

    state = torch.load(root / "models" / kind / "best.pt", weights_only=True)
    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()


def test_the_served_threshold_is_the_validation_quantile_recorded_with_the_version(deployed):
    """score.json's threshold is the 0.99 quantile of the validation images' scores,
    recomputed here from the checkpoint; the card and the registered version carry it."""
    from vaectl.data import load_split
    from vaectl.tracking import registry_client

    root = deployed["root"]
    validation = load_split(deployed["prepared"], "val")[0].astype(np.float32) / 255
    for kind, name in (("vae", "vae-mnist"), ("ae", "ae-mnist")):
        calibration = json.loads((root / "export" / kind / "score.json").read_text())
        expected = np.quantile(independent_scores(checkpoint(root, kind), validation), 0.99)
        assert calibration["threshold"] == pytest.approx(expected, abs=1e-3)
        assert calibration["calibration"] == f"validation split, {len(validation)} images"
        assert deployed["cards"][kind]["score"] == calibration
        assert "score" in deployed["cards"][kind]["modes"]
        version = deployed["first"][kind]["version"]
        with deployed_env(deployed):
            assert registry_client.version_tag(name, version, "ood_threshold") == str(
                calibration["threshold"]
            )


def test_score_mode_through_predict_and_serve_gives_each_image_one_score(deployed):
    """`vaectl predict --mode score` and `vaectl serve` with mode score: the checkpoint's
    score of each image, the flag exactly where it exceeds the version's threshold, the same
    score for an image sent alone or in a batch; a blank white page is flagged."""
    root = deployed["root"]
    images = load_test_images(deployed, 6)
    white = np.ones((1, 28, 28), np.uint8) * 255
    np.savez(root / "to_score.npz", x=np.concatenate([images, white]))
    done = subprocess.run(
        [sys.executable, "-m", "vaectl", "predict", "vae-mnist@champion", "--mode", "score"]
        + ["--input", "to_score.npz", "--output", "scored.npz"],
        cwd=root,
        env=deployed["env"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    scored = np.load(root / "scored.npz")
    threshold = json.loads((root / "export" / "vae" / "score.json").read_text())["threshold"]
    assert float(scored["threshold"]) == threshold and scored["output"].shape == (7, 2)
    expected = independent_scores(checkpoint(root, "vae"), np.concatenate([images, white]) / np.float32(255))
    np.testing.assert_allclose(scored["score"], expected, atol=2e-3)
    assert np.array_equal(scored["out_of_distribution"], scored["score"] > threshold)
    assert scored["out_of_distribution"][-1]  # a white page is nothing like a digit
    flagged = int(scored["out_of_distribution"].sum())
    assert f"7 rows -> scored.npz (output 7 x 2); {flagged} out of distribution" in done.stdout
    pixels = (np.concatenate([images, white]) / np.float32(255)).reshape(7, 784)
    with serving(deployed) as port:
        wait_until_up(f"http://127.0.0.1:{port}/ping")

        def served(rows):
            status, body = _post(
                port, json.dumps({"inputs": rows.tolist(), "params": {"mode": "score"}}).encode()
            )
            assert status == 200, body
            return np.array(body["predictions"])

        batch = served(pixels)
        alone = np.concatenate([served(pixels[i : i + 1]) for i in range(len(pixels))])
    np.testing.assert_allclose(batch[:, 0], scored["score"], atol=1e-4)
    np.testing.assert_allclose(alone, batch, atol=1e-4)
    assert np.array_equal(batch[:, 1], scored["out_of_distribution"].astype(float))


def load_test_images(deployed, count: int) -> np.ndarray:
    from vaectl.data import load_split

    return load_split(deployed["prepared"], "test")[0][:count]
