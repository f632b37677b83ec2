"""The installed packages against requirements.lock, and the machine facts a result's bytes
depend on: what `vaectl doctor` prints and every MLflow run carries as tags."""

from __future__ import annotations

import hashlib
import platform
import re
from importlib import metadata
from pathlib import Path

from vaectl import UserError

LOCK_FILE = Path("requirements.lock")  # `make lock` writes it, `make setup` installs it exactly
# the packages whose version changes what the pipeline computes or writes
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "pillow",
    "onnx",
    "onnxruntime",
    "mlflow",
    "dvc",
    "great-expectations",
)
# CPU flags (as /proc/cpuinfo spells them) that decide which kernels a library picks
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
)


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: `Great_Expectations` == `great-expectations`."""
    return re.sub(r"[-_.]+", "-", name).lower()


LOCK_MAX_BYTES = 16 << 20  # requirements.lock is ~300 kB


def locked_versions(lock: Path = LOCK_FILE) -> dict[str, str]:
    """{canonical name: version} of every `name==version` pin in a pip requirements lock, read
    only if it is a text file under LOCK_MAX_BYTES."""
    size = lock.stat().st_size
    if size > LOCK_MAX_BYTES:
        raise UserError(f"{lock}: {size:,} bytes, more than a lock file holds ({LOCK_MAX_BYTES:,})")
    try:
        text = lock.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{lock} is not a text requirements file (`make lock` writes one)") from None
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.MULTILINE)
    return {canonical(name): version for name, version in pins}


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def lock_drift(lock: Path = LOCK_FILE) -> dict[str, tuple[str, str | None]]:
    """{name: (locked, installed)} for every pin the environment does not have exactly;
    packages installed beside the lock are not drift."""
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return {
        name: (version, installed.get(name))
        for name, version in locked_versions(lock).items()
        if installed.get(name) != version
    }


def versions() -> dict[str, str]:
    """Python's and the key packages' versions ("-" when one is missing)."""
    return {
        "python": platform.python_version(),
        **{name: installed_version(name) or "-" for name in KEY_PACKAGES},
    }


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(the CPU's model name, which of ISA_FLAGS it has), from Linux's cpuinfo where there is one."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    return (model.group(1).strip() if model else platform.machine()), [f for f in ISA_FLAGS if f in present]


def run_tags(lock: Path) -> dict[str, str]:
    """What an MLflow run records of the environment it ran in."""
    model, flags = cpu()
    tags = {
        "vaectl.versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "vaectl.cpu": f"{model} ({' '.join(flags) or 'no listed ISA flags'})",
    }
    if lock.is_file():
        drift = lock_drift(lock)
        tags["vaectl.lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
        tags["vaectl.lock_drift"] = (
            ", ".join(f"{n} {v[1] or 'missing'} (locked {v[0]})" for n, v in drift.items()) or "none"
        )
    return tags
