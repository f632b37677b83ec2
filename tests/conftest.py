"""Shared fixtures: small synthetic datasets written the way `vaectl fetch` writes them."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

from vaectl.numerics import PORTABLE_ENV

# before numpy and torch load: in-process tests compute with the pipeline's portable numerics
# (and `vaectl` commands run in-process accept them); subprocesses inherit them
os.environ.update(PORTABLE_ENV)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# one intra-op thread a test process: `make test` runs a worker per core, and with more threads
# than cores OpenMP's waiting threads spin on the cores the other workers need. Stages run as
# commands set their own count (numerics.threads); tests that need another set it themselves.
torch.set_num_threads(1)

from vaectl.data import describe, self_sha256  # noqa: E402
from vaectl.files import write_json  # noqa: E402

# The modules whose tests run longest (measured with --durations), longest first.
LONGEST_FIRST = ("test_pipeline.py", "test_distributed.py", "test_deploy.py", "test_team.py")


def pytest_collection_modifyitems(items):
    """Start the longest modules first. `make test` has pytest-xdist deal modules out whole in
    collection order (--dist loadfile --no-loadscope-reorder), so each worker starts on a long
    end-to-end module and the short ones fill in after; collected last, a long module ran
    alone at the end. The order within a module is kept (the pipeline tests build on each
    other, on one tiny pipeline built once)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


def synthetic_digits(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct, class-dependent uint8 28x28 images: a bright bar per class plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), n_per_class)
    images = (rng.random((len(labels), 28, 28)) * 60).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 220
    return images, labels


def write_prepared(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        np.savez(root / f"{name}.npz", images=images, labels=labels)
    manifest = {
        "source": {"name": "synthetic"},
        "params": {},
        "splits": {name: describe(*arrays) for name, arrays in splits.items()},
    }
    write_json(root / "manifest.json", {**manifest, "self_sha256": self_sha256(manifest)})
    return root


def use_local_store(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Point vaectl (and MLflow) at a sqlite store of its own under `root`, artifacts beside it."""
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    mp.setenv("VAECTL_ROOT", str(root))


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own MLflow store in its tmp_path."""
    use_local_store(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A valid prepared dataset: 10 classes, 30/5/5 images per class."""
    return write_prepared(
        tmp_path / "prepared",
        {
            "train": synthetic_digits(30, seed=1),
            "val": synthetic_digits(5, seed=2),
            "test": synthetic_digits(5, seed=3),
        },
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout_s: float = 90) -> None:
    """Poll `url` until it answers 200 (servers take seconds to import and bind)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
