"""`vaectl train --nproc 2`: two real CPU processes under torchrun (gloo), against one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from vaectl import UserError, custody, tracking
from vaectl import train as train_stage
from vaectl.distributed import Launch
from vaectl.files import sha256_file
from vaectl.params import parse_params
from vaectl.team import SYSTEM_PROGRAMS

from .tiny import TINY, assert_same_weights, weights

# Same global batch, permutation and binarisation as one process; only the second process's
# reparameterisation noise differs, so the validation losses differ by noise alone.
VAL_LOSS_TOLERANCE = 0.02  # relative
TWO_PROCESS = {**TINY, "train": {**TINY["train"], "vae": {**TINY["train"]["vae"], "epochs": 6}}}


# torchrun workers, each test on its own MLflow store
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("local_store")]


def train(tmp_path, prepared, name, *args, epochs=6, model=None):
    params = {
        **TWO_PROCESS,
        "model": {**TWO_PROCESS["model"], **(model or {})},
        "train": {**TWO_PROCESS["train"], "vae": {**TWO_PROCESS["train"]["vae"], "epochs": epochs}},
    }
    (tmp_path / f"params-{epochs}.yaml").write_text(json.dumps(params))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vaectl",
            "train",
            "--model",
            name,
            "--kind",
            "vae",
            "--params",
            f"params-{epochs}.yaml",
            "--prepared",
            str(prepared),
            *args,
        ],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )


# The VampPrior's pseudo-images are used outside DDP's forward (by the KL), the encoder both
# inside and outside it: the two-process run must still run, learn and match one.
@pytest.mark.parametrize("model", [{}, {"pseudo_inputs": 5}], ids=["n01-prior", "vampprior"])
def test_two_processes_reach_the_loss_of_one(tmp_path, prepared, model):
    one = train(tmp_path, prepared, "one", model=model)
    two = train(tmp_path, prepared, "two", "--nproc", "2", model=model)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stdout.count("two: best val loss") == 1  # rank 1 prints nothing
    curves = {
        name: [
            e["val_loss"]
            for e in torch.load(tmp_path / "models" / name / "last.pt", weights_only=True)["history"]
        ]
        for name in ("one", "two")
    }
    assert curves["two"][-1] < curves["two"][0] - 20  # it learns
    assert abs(curves["two"][-1] - curves["one"][-1]) / curves["one"][-1] < VAL_LOSS_TOLERANCE
    assert curves["two"] != curves["one"]  # really a different run, not a single process
    (run,) = tracking.find_runs("vaectl", "params.processes = '2'")  # only rank 0 logged
    assert run.info.status == "FINISHED"
    assert run.data.tags[custody.CHECKPOINT.tag] == sha256_file(tmp_path / "models" / "two" / "best.pt")


def test_two_process_resume_equals_uninterrupted(tmp_path, prepared):
    assert train(tmp_path, prepared, "whole", "--nproc", "2", epochs=4).returncode == 0
    assert train(tmp_path, prepared, "split", "--nproc", "2", epochs=2).returncode == 0
    wrong = train(tmp_path, prepared, "split", "--resume", epochs=4)
    assert wrong.returncode == 1 and "resume with --nproc 2" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    resumed = train(tmp_path, prepared, "split", "--nproc", "2", "--resume", epochs=4)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(
        weights(tmp_path / "models" / "whole" / "last.pt"), weights(tmp_path / "models" / "split" / "last.pt")
    )


def test_more_processes_than_gpus_is_caught_before_launch(tmp_path, prepared, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    params = parse_params(
        {
            **TINY,
            "numerics": {"mode": "fast"},  # portable numerics refuse CUDA
            "train": {**TINY["train"], "device": "cuda"},
        }
    )
    with pytest.raises(UserError, match="--nproc 2 on CUDA needs 2 GPUs, this machine has 1"):
        train_stage.preflight("vae", params, prepared, tmp_path / "m", False, Launch(2))
    train_stage.preflight("vae", params, prepared, tmp_path / "m", False, Launch(1))  # one per GPU is fine


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair, 10.231.N.1 and .2: two hosts on one
    machine, each seeing the other only across that link (both keep the machine's name,
    which resolves to loopback, as on many real hosts)."""
    ip = shutil.which("ip") or shutil.which("ip", path=SYSTEM_PROGRAMS)
    if os.geteuid() != 0:
        pytest.skip("two hosts on one machine need root (`ip netns`)")
    if ip is None:  # CI, as root, has iproute2: there its absence fails
        (pytest.fail if os.environ.get("CI") else pytest.skip)("two hosts need iproute2 (`ip netns`)")
    tag = os.getpid() % 100_000
    hosts = [
        (f"vaectl-{side}{tag}", f"vt{side}{tag}", f"10.231.{tag % 250}.{i + 1}")
        for i, side in enumerate("ab")
    ]
    setup = [[ip, "link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1]]]
    for namespace, interface, address in hosts:
        setup = [[ip, "netns", "add", namespace], *setup] + [
            [ip, "link", "set", interface, "netns", namespace],
            [ip, "-n", namespace, "addr", "add", f"{address}/24", "dev", interface],
            [ip, "-n", namespace, "link", "set", interface, "up"],
            [ip, "-n", namespace, "link", "set", "lo", "up"],
        ]
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True)
        yield ip, hosts
    finally:
        for namespace, _, _ in hosts:  # its end of the veth pair goes with it
            subprocess.run([ip, "netns", "del", namespace], capture_output=True)


def test_two_hosts_train_the_bytes_of_two_processes_on_one(tmp_path, prepared, two_hosts):
    """`vaectl train --nodes 2 --rendezvous A:PORT` on two hosts (one process each, gloo over
    the veth link, the launcher's c10d rendezvous over TCP) writes, where rank 0 runs, the
    checkpoint `--nproc 2` writes on one host."""
    one_host = train(tmp_path, prepared, "together", "--nproc", "2", epochs=2)
    assert one_host.returncode == 0, one_host.stderr
    params = tmp_path / "params-2.yaml"
    ip, hosts = two_hosts
    rendezvous = f"{hosts[0][2]}:29400"
    started = []
    for namespace, _, _ in hosts:
        (tmp_path / namespace).mkdir()
        args = ["--model", "apart", "--kind", "vae", "--params", str(params), "--prepared", str(prepared)]
        started.append(
            subprocess.Popen(
                [ip, "netns", "exec", namespace, sys.executable, "-m", "vaectl", "train", *args]
                + ["--nodes", "2", "--rendezvous", rendezvous],
                cwd=tmp_path / namespace,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [host.communicate(timeout=300) for host in started]
    assert [host.returncode for host in started] == [0, 0], outputs
    written = [p for p in tmp_path.glob("vaectl-*/models/apart/best.pt")]
    assert len(written) == 1  # where rank 0 ran; the other host writes nothing
    assert_same_weights(weights(tmp_path / "models" / "together" / "best.pt"), weights(written[0]))
