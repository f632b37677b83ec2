"""numerics.apply: the portable pins are set before torch and numpy load and checked after,
and each pin makes its library compute the same bytes whatever the CPU asks for. The
whole-pipeline proof is in test_pipeline.py (fresh clones under simulated CPUs)."""

import os
import subprocess
import sys

import pytest

from vaectl import UserError, numerics
from vaectl.params import NumericsParams

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
