"""Fingerprints of the numerics a CPU gives under portable numerics: one sha256 per kernel
family the pipeline uses, and per step of the realism judge's training. Two CPUs whose
`dvc repro` disagree run this, and the first differing entry names the kernel to pin.

The judge (`vaectl classifier`) was the one stage whose bytes differed between an Intel Xeon
and an AMD EPYC; the autoencoders agreed. Run on both, this named the kernel: torch's
default Adam takes its square root from MKL's vector maths, whose code follows the vendor
(`sqrt`, `adam_single_tensor`, `adam_foreach` below differ). The judge now trains with the
fused Adam the autoencoders use. The entries are the kernel families the stages reach:
elementwise maths, log-softmax cross-entropy and its backward, each Adam, the matrix
products at the judge's shapes, Cholesky factors, then the judge's first steps on
synthetic digits.
Committed fingerprints, one per CPU kind: docs/fingerprints/.

    python benchmarks/numerics_fingerprint.py                  # print the JSON
    python benchmarks/numerics_fingerprint.py --out FILE       # write it
    python benchmarks/numerics_fingerprint.py --compare docs/fingerprints   # exit 1 on a difference
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

from vaectl import numerics

os.environ.update({**numerics.PORTABLE_ENV, "OMP_NUM_THREADS": "1"})  # pins, before torch loads

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vaectl.judge import build_classifier  # noqa: E402

BATCH, HIDDEN, STEPS = 128, [256], 20  # the judge's defaults in params.yaml (eval.classifier)
# entries that describe the machine rather than a kernel's bytes
DIAGNOSTIC = frozenset({"torch", "cpu_capability", "vendor", "mkl_cpu_type", "mkl_is_zen"})
# kernels measured to differ between vendors, each reaching an op in
# numerics.VENDOR_DEPENDENT_OPS: no stage uses them (tests/test_numerics.py)
VENDOR_DEPENDENT = frozenset({"sqrt", "adam_single_tensor", "adam_foreach"})


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def elementwise() -> dict[str, str]:
    x = torch.linspace(-30, 30, 1_000_003)
    positive = x.abs() + 1e-3
    return {
        "exp": digest(x.exp()),
        "log": digest(positive.log()),
        "log1p": digest(positive.log1p()),
        "sqrt": digest(positive.sqrt()),
        "sin": digest(x.sin()),
        "cos": digest(x.cos()),
        "erf": digest(x.erf()),
        "norm": digest(x[:999_000].reshape(-1, 999).norm(dim=-1)),
        "tanh": digest(x.tanh()),
        "sigmoid": digest(x.sigmoid()),
        "softplus": digest(nn.functional.softplus(x)),
        "lerp": digest(torch.lerp(x, x.flip(0), 0.1)),
        "addcdiv": digest(x.addcdiv(x.flip(0), positive, value=-1e-3)),
        "logsumexp": digest(x[:999_000].reshape(-1, 999).logsumexp(dim=-1)),
    }


def cholesky() -> dict[str, str]:
    """LAPACK's factorisation, as `vaectl.prior` fits the AE's Gaussian and the latent prior."""
    gen = torch.Generator().manual_seed(5)
    out = {}
    for d in (2, 16, 64):
        a = torch.randn(4 * d, d, generator=gen)
        out[f"cholesky_{d}"] = digest(torch.linalg.cholesky(a.T @ a / (4 * d) + 1e-6 * torch.eye(d)))
    return out


def softmax_family() -> dict[str, str]:
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(BATCH, 10, generator=gen) * 5).requires_grad_()
    labels = torch.randint(10, (BATCH,), generator=gen)
    log_p = torch.log_softmax(logits, -1)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    return {
        "log_softmax": digest(log_p),
        "cross_entropy": digest(loss),
        "cross_entropy_grad": digest(logits.grad),
    }


def matmuls() -> dict[str, str]:
    gen = torch.Generator().manual_seed(2)
    out = {}
    for rows, inner, cols in [
        (BATCH, 784, 256),
        (BATCH, 256, 10),
        (256, BATCH, 784),
        (10, BATCH, 256),
        (BATCH, 10, 256),
        (1000, 784, 256),
        (64, 784, 300),
    ]:
        a, b = torch.randn(rows, inner, generator=gen), torch.randn(inner, cols, generator=gen)
        out[f"matmul_{rows}x{inner}x{cols}"] = digest(a @ b)
    return out


def adam_steps() -> dict[str, str]:
    out = {}
    for name, options in [
        ("adam_single_tensor", {"foreach": False}),
        ("adam_foreach", {"foreach": True}),
        ("adam_fused", {"fused": True}),
    ]:
        gen = torch.Generator().manual_seed(3)
        weight = torch.randn(256, 784, generator=gen).requires_grad_()
        optimizer = torch.optim.Adam([weight], lr=1e-3, **options)
        for _ in range(3):
            weight.grad = torch.randn(256, 784, generator=gen) * 1e-2
            optimizer.step()
        out[name] = digest(weight)
    return out


def judge_training() -> dict[str, str]:
    """The judge's first STEPS steps, as `vaectl classifier` takes them (its model, its Adam),
    on synthetic digits: the logits, loss, every gradient and the weights after each step."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(BATCH * 4, 784, generator=gen)
    y = torch.randint(10, (BATCH * 4,), generator=gen)
    model = build_classifier(HIDDEN)
    out = {"judge_init": digest(*model.parameters())}
    optimizer = numerics.adam(model.parameters(), 1e-3)
    for step in range(STEPS):
        rows = slice((step % 4) * BATCH, (step % 4 + 1) * BATCH)
        logits = model(x[rows])
        loss = nn.functional.cross_entropy(logits, y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        optimizer.step()
        out[f"judge_step{step:02d}"] = digest(logits, loss, *grads, *model.parameters())
    return out


def mkl_branch() -> dict[str, str]:
    """Which CPU MKL believes it runs on: its COMPATIBLE branch still takes other matrix-product
    code when it sees an AMD Zen (simulated on a Xeon by interposing `mkl_serv_cpuiszen`: every
    matmul entry above then differs), so a cross-vendor comparison starts by reading these."""
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    try:
        return {"mkl_cpu_type": str(lib.mkl_serv_get_cpu_type()), "mkl_is_zen": str(lib.mkl_serv_cpuiszen())}
    except AttributeError:  # a torch built without MKL
        return {"mkl_cpu_type": "no MKL", "mkl_is_zen": "no MKL"}


def vendor() -> str:
    """The CPU's vendor as cpuid gives it (GenuineIntel, AuthenticAMD)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def fingerprint() -> dict[str, str]:
    torch.set_num_threads(1)
    return {
        "vendor": vendor(),
        **mkl_branch(),
        **elementwise(),
        **softmax_family(),
        **matmuls(),
        **cholesky(),
        **adam_steps(),
        **judge_training(),
    }


def load_records(paths: list[Path]) -> dict[str, dict[str, str]]:
    """Committed fingerprints by file name, from files or the directories that hold them."""
    files = [f for p in paths for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    return {f.name: json.loads(f.read_text()) for f in files}


def compare(found: dict[str, str], records: dict[str, dict[str, str]]) -> tuple[list[str], list[str]]:
    """(failures, unconfirmed) for this machine's fingerprints against `records` of the same
    torch. A failure: two records of a kernel disagree though it is not a known
    vendor-dependent one, or this machine differs from a kernel's bytes that CPUs of two
    vendors recorded alike. Unconfirmed: it differs from bytes one vendor alone recorded."""
    same_torch = [r for r in records.values() if r.get("torch") == found["torch"]]
    failures, unconfirmed = [], []
    for key in [k for k in found if k not in DIAGNOSTIC and k not in VENDOR_DEPENDENT]:
        recorded = {r[key] for r in same_torch if key in r}
        vendors = {r.get("vendor", "unknown") for r in same_torch if key in r}
        if len(recorded) > 1:
            failures.append(
                f"{key}: the recorded fingerprints disagree and it is not a known vendor-dependent kernel"
            )
        elif recorded and found[key] not in recorded:
            line = (
                f"{key}: here {found[key]}, recorded {next(iter(recorded))} on {', '.join(sorted(vendors))}"
            )
            (failures if len(vendors) > 1 else unconfirmed).append(line)
    return failures, unconfirmed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument(
        "--compare", type=Path, nargs="+", help="fingerprint files or folders: list what differs"
    )
    args = parser.parse_args()
    found = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **fingerprint(),
    }
    text = json.dumps(found, indent=1) + "\n"
    if args.out:
        args.out.write_text(text)
    if not args.compare:
        print(text, end="") if not args.out else None
        return 0
    records = load_records(args.compare)
    failures, unconfirmed = compare(found, records)
    for line in failures:
        print(f"differs: {line}")
    for line in unconfirmed:
        print(f"unconfirmed: {line} (one vendor's bytes: run this on the other vendor and commit its file)")
    against = ", ".join(records)
    print(f"{found['vendor']}: {len(failures)} failures, {len(unconfirmed)} unconfirmed against {against}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
