"""Which kernels compute: the settings that make a float32 result the same bytes on any
x86-64 CPU (`numerics.mode: portable`), or leave each library its fastest path (`fast`).

A float32 run's bytes depend on more than code, params and data. Each of these picks its
code path by the CPU it finds, and the paths round differently:
- ATen (torch's CPU kernels) picks its vectorised kernels (baseline, AVX2, AVX-512) when torch
  is imported; its random normal draws and the fused Adam step too;
- MKL picks its matrix-multiply path by the CPU (conditional numerical reproducibility pins it);
- numpy dispatches its loops (log, exp, sums) to AVX2 or AVX-512 code;
- the thread count splits reductions differently, and torch's default is the number of cores;
- bfloat16 matmuls round differently on AMX, AVX512-BF16 and emulated paths (params allow
  `eval.iw_precision: bfloat16` in fast mode only);
- a GPU has its own kernels, so portable mode hides any GPU and computes on the CPU;
- MKL's vector maths (VML), behind some of ATen's elementwise ops, follows the CPU's vendor
  whatever the pins say: those ops are kept out of every stage (`VENDOR_DEPENDENT_OPS`).
These are read when the library loads: `apply` sets them before torch or numpy
is imported, which is why the CLI calls it before importing a stage; training processes
launched for `--nproc` inherit them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from vaectl import UserError
from vaectl.params import NumericsParams

# numpy's x86 dispatch targets above its baseline: 2.x names, then 1.x names (unknown names
# are ignored, so one list serves both)
NUMPY_DISPATCH_TARGETS = (
    "X86_V3 X86_V4 AVX512_ICL AVX512_SPR AVX F16C FMA3 AVX2 AVX512F "
    "AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL"
)

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",  # ATen's baseline x86-64 kernels, on every CPU
    "MKL_CBWR": "COMPATIBLE",  # MKL's code path that every x86-64 CPU runs the same
    "NPY_DISABLE_CPU_FEATURES": NUMPY_DISPATCH_TARGETS,  # numpy's baseline loops
    "CUDA_VISIBLE_DEVICES": "",  # no GPU: train.device auto and the IW-NLL stay on the CPU
}

# ATen ops whose float32 bytes differ between an Intel Xeon and an AMD EPYC under every pin
# above (benchmarks/numerics_fingerprint.py on both): ATen hands them to MKL's vector maths,
# which takes its own code by vendor (on the EPYC 15% of float32 roots are not the correctly
# rounded ones, and they differ from the Xeon's). Torch's default Adam reaches them; no stage
# may (tests/test_numerics.py records every op of a tiny training and evaluation).
VENDOR_DEPENDENT_OPS = frozenset({"aten.sqrt", "aten.sqrt_", "aten._foreach_sqrt", "aten._foreach_sqrt_"})


class FusedAdam:
    """The optimiser every stage trains with: Adam's fused kernel (`torch._fused_adam_`, CPU
    since torch 2.4, and CUDA), called as `torch.optim.Adam(fused=True)` calls it, with the
    same state_dict, so checkpoints keep their bytes and old ones resume.
    - Its square root is the CPU's IEEE instruction, the same bytes on any x86-64 CPU, where
      torch's default Adam takes MKL's vendor-dependent one (`VENDOR_DEPENDENT_OPS`); and one
      pass over the weights instead of several, a quarter more steps per second on 2 cores.
    - It is not `torch.optim.Adam` because every `torch.optim` optimiser imports
      `torch._dynamo` when built and at each step (for torch.compile, which no stage uses):
      1.5-3 s more start-up in every training process."""

    BETAS, EPS = (0.9, 0.999), 1e-08
    GROUP = {  # torch.optim.Adam's hyperparameters, in its order (a state_dict's bytes follow it)
        "betas": BETAS,
        "eps": EPS,
        "weight_decay": 0,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": True,
        "decoupled_weight_decay": False,
    }

    def __init__(self, parameters, lr: float):
        self.params = list(parameters)
        self.param_groups: list[dict] = [{"lr": lr, **self.GROUP, "params": self.params}]
        self.state: dict = {}  # parameter -> {step, exp_avg, exp_avg_sq}, as torch keeps it

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        import torch

        with torch.no_grad():
            live = [p for p in self.params if p.grad is not None]
            for p in live:
                if p not in self.state:
                    self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
            if not live:
                return
            moments = [self.state[p] for p in live]
            steps = [m["step"] for m in moments]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                live,
                [p.grad for p in live],
                [m["exp_avg"] for m in moments],
                [m["exp_avg_sq"] for m in moments],
                [],
                steps,
                amsgrad=False,
                lr=float(self.param_groups[0]["lr"]),
                beta1=self.BETAS[0],
                beta2=self.BETAS[1],
                weight_decay=0,
                eps=self.EPS,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {
            "state": {index[p]: moments for p, moments in self.state.items()},
            "param_groups": [{**group, "params": list(range(len(self.params)))}],
        }

    def load_state_dict(self, saved: dict) -> None:
        """A state_dict of this class or of `torch.optim.Adam(fused=True)` over the same
        parameters; anything else is refused (it would train on with wrong moments)."""
        import torch

        groups = saved.get("param_groups") or [{}]
        shapes = {i: tuple(p.shape) for i, p in enumerate(self.params)}
        if len(groups) != 1 or groups[0].get("params") != list(shapes) or groups[0].get("fused") is not True:
            raise UserError("the checkpoint's optimiser state is not fused Adam over this model's parameters")
        for i, moments in saved["state"].items():
            if tuple(moments["exp_avg"].shape) != shapes[i]:
                raise UserError(f"the checkpoint's optimiser state does not fit parameter {i}")
        self.param_groups[0]["lr"] = groups[0]["lr"]
        self.state = {
            self.params[i]: {
                "step": moments["step"].to(self.params[i].device, torch.float32),
                "exp_avg": moments["exp_avg"].to(self.params[i].device, self.params[i].dtype),
                "exp_avg_sq": moments["exp_avg_sq"].to(self.params[i].device, self.params[i].dtype),
            }
            for i, moments in saved["state"].items()
        }


def adam(parameters, lr: float) -> FusedAdam:
    """The optimiser every stage trains with (see `FusedAdam`)."""
    return FusedAdam(parameters, lr)


# the CPU flags (as Linux's cpuinfo names them) that each kernel set ATen may be asked for runs on
CAPABILITY_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """Every flag the CPU reports, or None where Linux's cpuinfo is not there to tell."""
    try:
        found = re.search(r"^flags\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
    except OSError:
        return None
    return set(found.group(1).split()) if found else None


def check_capability(flags: set[str] | None) -> None:
    """Refuse, before torch loads, an ATEN_CPU_CAPABILITY this CPU (`flags`) cannot run: torch
    would die of SIGILL at its first vector kernel, with no message and its run left open."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    missing = [f for f in CAPABILITY_FLAGS.get(asked, ()) if flags is not None and f not in flags]
    if missing:
        raise UserError(
            f"ATEN_CPU_CAPABILITY={asked}: this CPU lacks {', '.join(missing)}, so torch would stop "
            f"with an illegal instruction; unset it (or use {'avx2 or ' if asked == 'avx512' else ''}default)"
        )


def apply(numerics: NumericsParams) -> None:
    """Put `numerics` in force for this process and the processes it starts: the portable
    pins before torch and numpy load, then torch's intra-op thread count. A process that had
    loaded them already under other settings is refused: the pins would not take; so is a
    kernel set this CPU cannot run."""
    check_capability(cpu_flags())
    if numerics.mode == "portable":
        late = sorted(m for m in ("numpy", "torch") if m in sys.modules)
        unset = [k for k, v in PORTABLE_ENV.items() if os.environ.get(k) != v]
        if late and unset:
            raise UserError(
                f"numerics.mode portable: {' and '.join(late)} loaded before "
                f"{', '.join(unset)} could be set; run the stage as its own "
                f"`vaectl` command"
            )
        os.environ.update(PORTABLE_ENV)
    if numerics.threads:
        os.environ["OMP_NUM_THREADS"] = str(numerics.threads)
    import torch

    if numerics.threads:
        torch.set_num_threads(numerics.threads)
    if numerics.mode == "portable" and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise UserError(
            f"numerics.mode portable: torch runs its "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, not the baseline ones "
            f"(ATEN_CPU_CAPABILITY was set after torch loaded)"
        )


def native_capability() -> str:
    """The kernels torch picks on this CPU when nothing pins them (asked of a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or "unknown"


def in_force() -> dict[str, str]:
    """What this process computes with, for MLflow tags and `vaectl doctor` (torch is not
    imported for it: its figures are given once it is loaded)."""
    pinned = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
    torch = sys.modules.get("torch")
    return {
        "numerics": "portable" if pinned else "fast",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch else "torch not loaded",
        "torch_threads": (
            str(torch.get_num_threads()) if torch else os.environ.get("OMP_NUM_THREADS", "default")
        ),
    }
