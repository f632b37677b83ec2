"""numerics.apply: the portable pins are set before torch and numpy load and checked after,
and each pin makes its library compute the same bytes whatever the CPU asks for. The
whole-pipeline proof is in test_pipeline.py (fresh clones under simulated CPUs). What no
pin reaches, the CPU's vendor, is checked by the ops the stages call and by the committed
kernel fingerprints of Intel and AMD CPUs."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vaectl import UserError, numerics
from vaectl.params import NumericsParams

from .tiny import registered_on_a_local_store

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import hashlib, sys
from vaectl import numerics
from vaectl.params import NumericsParams
numerics.apply(NumericsParams(sys.argv[1], 1))
import numpy as np, torch
x = np.random.default_rng(0).random(100_000).astype(np.float32) + 0.5
w = torch.from_numpy(x[:64 * 256].reshape(64, 256))
out = [np.log(x).tobytes(), np.exp(x).tobytes(), (w @ w.T).numpy().tobytes(),
       torch.nn.functional.softplus(w).numpy().tobytes()]
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
      *(hashlib.sha256(o).hexdigest()[:16] for o in out))
"""

# what another CPU would make each library pick, simulated on this one
OTHER_CPUS = [
    {},  # this machine as it is
    {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "OMP_NUM_THREADS": "2",
    },
    {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "NPY_DISABLE_CPU_FEATURES": numerics.NUMPY_DISPATCH_TARGETS,
        "OMP_NUM_THREADS": "1",
    },
]


def probe(mode: str, cpu: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV} | cpu
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True, timeout=300
    )
    return done.stdout.split()


def test_portable_numerics_give_the_same_bytes_under_every_simulated_cpu():
    results = [probe("portable", cpu) for cpu in OTHER_CPUS]
    assert results[0][:2] == ["DEFAULT", "1"]
    assert results[1] == results[0] and results[2] == results[0]


def test_fast_numerics_leave_each_library_its_own_kernels():
    """The simulation is real: unpinned, the simulated CPUs compute other bytes (numpy's log
    and exp, ATen's softplus, MKL's product), so the test above could fail."""
    natural, baseline = probe("fast", OTHER_CPUS[0]), probe("fast", OTHER_CPUS[2])
    if natural[0] == "DEFAULT":
        pytest.skip("this CPU has no vector units beyond the baseline to differ from")
    assert baseline[0] == "DEFAULT" and natural[2:] != baseline[2:]


def test_portable_is_refused_once_torch_has_loaded_without_the_pins(monkeypatch):
    import torch  # noqa: F401  (loaded, as in any process that imported it first)

    monkeypatch.delenv("MKL_CBWR")
    with pytest.raises(UserError, match="torch loaded before MKL_CBWR could be set"):
        numerics.apply(NumericsParams("portable", 1))


def test_apply_sets_the_threads_and_reports_what_is_in_force(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored afterwards, as it was
    try:
        numerics.apply(NumericsParams("portable", 1))  # conftest set the pins before torch loaded
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert numerics.in_force() == {
            "numerics": "portable",
            "torch_cpu_capability": "DEFAULT",
            "torch_threads": "1",
        }
        monkeypatch.delenv("ATEN_CPU_CAPABILITY")
        assert numerics.in_force()["numerics"] == "fast"
    finally:
        torch.set_num_threads(before)


class OpRecorder(TorchDispatchMode):
    """The name of every ATen op called below autograd (backward passes and optimisers too)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_no_stage_reaches_a_vendor_dependent_op(tmp_path):
    """Train (VAE, AE), the realism judge, evaluate, export and register, tiny, with every op
    recorded: none may be one whose bytes follow the CPU's vendor. Torch's default Adam
    reaches `aten._foreach_sqrt`; the judge trained with it until this test."""
    recorder = OpRecorder()
    with recorder, registered_on_a_local_store(tmp_path):
        pass
    assert {"aten._fused_adam_", "aten.linalg_cholesky_ex", "aten.addmm"} <= recorder.ops  # it saw the stages
    reached = sorted(recorder.ops & numerics.VENDOR_DEPENDENT_OPS)
    assert not reached, f"a stage calls {reached}"


def test_the_recorder_sees_torchs_default_adam_take_the_vendor_dependent_root():
    weight = torch.ones(3, requires_grad=True)
    weight.grad = torch.ones(3)
    recorder = OpRecorder()
    with recorder:
        torch.optim.Adam([weight]).step()
    assert recorder.ops & numerics.VENDOR_DEPENDENT_OPS


FINGERPRINT = [sys.executable, str(ROOT / "benchmarks" / "numerics_fingerprint.py"), "--compare"]


def fingerprint_against(folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    return subprocess.run([*FINGERPRINT, str(folder)], env=env, capture_output=True, text=True, timeout=300)


def test_this_cpu_computes_every_kernel_two_vendors_recorded_alike():
    """Each committed fingerprint (docs/fingerprints/) is one CPU kind's bytes for the kernels
    the stages use: this CPU must give the bytes an Intel and an AMD CPU agree on, and the
    records may differ only in the known vendor-dependent kernels. Bytes that one vendor
    alone recorded are compared too, reported as a warning (CI's output then says whether
    another vendor reproduces them)."""
    done = fingerprint_against(ROOT / "docs" / "fingerprints")
    assert done.returncode == 0, done.stdout + done.stderr
    unconfirmed = [line for line in done.stdout.splitlines() if line.startswith("unconfirmed")]
    if unconfirmed:
        warnings.warn("numerics fingerprint: " + "; ".join(unconfirmed), stacklevel=1)


@pytest.mark.parametrize("planted", ["records disagree", "this cpu differs"])
def test_the_fingerprint_check_fails_on_a_kernel_that_follows_the_cpu(tmp_path, planted):
    records = {f.name: json.loads(f.read_text()) for f in (ROOT / "docs" / "fingerprints").glob("*.json")}
    intel = [name for name, r in records.items() if r["vendor"] == "GenuineIntel"]
    for name in intel if planted == "this cpu differs" else intel[:1]:
        records[name]["exp"] = "0" * 16
    if planted == "this cpu differs":  # every vendor agrees on bytes this CPU does not give
        for record in records.values():
            record["exp"] = "0" * 16
    for name, record in records.items():
        (tmp_path / name).write_text(json.dumps(record))
    done = fingerprint_against(tmp_path)
    assert done.returncode == 1 and "differs: exp" in done.stdout, done.stdout


def test_a_kernel_set_the_cpu_cannot_run_is_refused_before_torch_would_die(monkeypatch, tmp_path):
    """ATEN_CPU_CAPABILITY=avx512 on an AVX2-only CPU killed `train` with SIGILL (exit 132, no
    message); numerics.apply now refuses it from the CPU's flags, before torch loads."""
    from vaectl import UserError, numerics

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx fma avx2\n")
    zen2 = numerics.cpu_flags(cpuinfo)
    assert zen2 == {"fpu", "sse4_2", "avx", "fma", "avx2"}
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    with pytest.raises(UserError, match="ATEN_CPU_CAPABILITY=avx512: this CPU lacks avx512f, avx512bw"):
        numerics.check_capability(zen2)
    numerics.check_capability(zen2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"})
    numerics.check_capability(None)  # no cpuinfo to tell: not refused
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    numerics.check_capability(zen2)
    with pytest.raises(UserError, match="lacks avx2, fma"):
        numerics.check_capability({"sse4_2"})
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    numerics.check_capability(set())


def _small_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _adam_checkpoint(make_optimiser) -> tuple[bytes, object]:
    """What train.py saves (weights and optimiser state) after 12 steps of a small MLP, the
    learning rate changed midway as the cosine schedule does."""
    import io

    torch.manual_seed(0)
    model = _small_mlp()
    optimiser = make_optimiser(model.parameters())
    draws = torch.Generator().manual_seed(1)
    for step in range(12):
        optimiser.zero_grad(set_to_none=True)
        model(torch.randn(8, 20, generator=draws)).square().mean().backward()
        if step == 6:
            optimiser.param_groups[0]["lr"] = 3e-4
        optimiser.step()
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimiser.state_dict()}, saved)
    return saved.getvalue(), optimiser


def test_the_stages_adam_saves_the_bytes_torchs_fused_adam_saves():
    """numerics.adam is torch's fused kernel without torch.optim: same weights, same
    state_dict bytes (last.pt keeps its bytes), and a torch.optim state resumes in it."""
    theirs, torch_adam = _adam_checkpoint(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True))
    ours, _ = _adam_checkpoint(lambda p: numerics.adam(p, 1e-3))
    assert ours == theirs
    resumed = numerics.adam(_small_mlp().parameters(), 1e-3)
    resumed.load_state_dict(torch_adam.state_dict())
    assert resumed.param_groups[0]["lr"] == 3e-4
    for i, moments in torch_adam.state_dict()["state"].items():
        assert torch.equal(resumed.state_dict()["state"][i]["exp_avg_sq"], moments["exp_avg_sq"])
    with pytest.raises(UserError, match="not fused Adam over this model's parameters"):
        numerics.adam(torch.nn.Linear(20, 5).parameters(), 1e-3).load_state_dict(torch_adam.state_dict())


def test_training_does_not_import_torch_dynamo(tmp_path, prepared, local_store):
    """torch.optim imports torch._dynamo (1.5-3 s) when an optimiser is built and at each
    step; `vaectl train` must not pay it."""
    import yaml

    from .tiny import TINY

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "vaectl",
            "train",
            "--model",
            "ae",
            "--prepared",
            str(prepared),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" in imported and "torch._dynamo" not in imported
