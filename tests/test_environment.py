"""The pinned environment: requirements.lock agrees with pyproject.toml, the environment the
tests run in is the lock, and drift is named package by package."""

import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from vaectl import environment

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / environment.LOCK_FILE


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def disagreements(requirements: list[Requirement], locked: dict[str, str]) -> list[str]:
    """Each requirement of pyproject.toml the lock leaves out or pins outside its range."""
    out = []
    for req in requirements:
        version = locked.get(environment.canonical(req.name))
        if version is None:
            out.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name}: locked {version}, pyproject.toml asks {req.specifier}")
    return out


def test_the_lock_satisfies_every_requirement_of_pyproject():
    assert disagreements(declared_requirements(), environment.locked_versions(LOCK)) == [], (
        "pyproject.toml and requirements.lock disagree: run `make lock`"
    )


def test_a_requirement_outside_the_lock_is_a_disagreement():
    locked = {"torch": "2.14.1", "numpy": "2.4.6"}
    assert disagreements([Requirement("torch>=2.4"), Requirement("NumPy>=1.24")], locked) == []
    assert disagreements([Requirement("torch>=2.15"), Requirement("onnx>=1")], locked) == [
        "torch: locked 2.14.1, pyproject.toml asks >=2.15",
        "onnx: not in the lock",
    ]


def test_every_pin_is_hash_checked_and_the_lock_is_for_ci_python():
    text = LOCK.read_text()
    pins = environment.locked_versions(LOCK)
    assert len(pins) > 100 and "torch" in pins and "great-expectations" in pins
    blocks = [b for b in text.split("\n") if "==" in b and not b.startswith(("#", " "))]
    assert len(blocks) == len(pins) and all(b.endswith("\\") for b in blocks)  # each pin has hashes
    assert text.count("--hash=sha256:") >= len(pins)


def test_the_tests_run_in_the_locked_environment():
    """`make setup` installs the lock exactly; an environment that drifted (a hand-installed
    upgrade) would test other code than users get."""
    assert environment.lock_drift(LOCK) == {}, "the environment is not requirements.lock: run `make setup`"


def test_lock_parsing_and_drift_name_each_package(tmp_path):
    lock = tmp_path / "requirements.lock"
    installed = environment.installed_version("pytest")
    lock.write_text(
        f"# header\nPyTest=={installed} \\\n    --hash=sha256:00\n    # via x\n"
        "great_expectations==0.0.1 \\\n    --hash=sha256:11\n"
        "no-such-package-vaectl==1.0 ; sys_platform == 'linux' \\\n    --hash=sha256:22\n"
    )
    assert environment.locked_versions(lock) == {
        "pytest": installed,
        "great-expectations": "0.0.1",
        "no-such-package-vaectl": "1.0",
    }
    drift = environment.lock_drift(lock)
    assert drift == {
        "great-expectations": ("0.0.1", environment.installed_version("great-expectations")),
        "no-such-package-vaectl": ("1.0", None),
    }
    tags = environment.run_tags(lock)
    assert (
        tags["vaectl.lock_drift"].startswith("great-expectations ")
        and "missing (locked 1.0)" in tags["vaectl.lock_drift"]
    )
    assert f"python {sys.version.split()[0]}" in tags["vaectl.versions"]


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (
            "model name\t: Test CPU\nflags\t\t: fpu sse4_2 avx2 fma avx512f amx_tile\n",
            ("Test CPU", ["sse4_2", "avx2", "fma", "avx512f", "amx_tile"]),
        ),
        ("model name\t: Old CPU\nflags\t\t: fpu sse4_2\n", ("Old CPU", ["sse4_2"])),
    ],
)
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, cpuinfo, expected):
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    assert environment.cpu(fake) == expected
    assert environment.cpu(tmp_path / "missing")[1] == []
