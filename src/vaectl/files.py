"""Atomic writes and hashing: a failed stage never leaves half-written outputs behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vaectl import UserError


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `dest` (file or directory).

    On any exception the temporary path is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    staged = tmp / dest.name
    try:
        yield staged
        if dest.is_dir() and not dest.is_symlink():
            old = tmp / (dest.name + ".old")
            os.replace(dest, old)
            os.replace(staged, dest)
        else:
            os.replace(staged, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive_dir(path: Path, holder: str) -> Iterator[None]:
    """Hold an advisory lock on directory `path` (created if missing) for the block, so that
    a second writer is refused at once instead of overwriting the first one's files. The lock
    is on the directory itself: no lock file is left among the outputs, and the kernel
    releases it when the holder dies."""
    import fcntl

    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path} is in use by another {holder}; wait for it to finish, "
                            f"or write somewhere else with --out") from None
        yield
    except BaseException:
        if created and not any(path.iterdir()):  # a failed start leaves no empty folder
            path.rmdir()
        raise
    finally:
        os.close(fd)


def write_json(dest: Path, obj: object) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
