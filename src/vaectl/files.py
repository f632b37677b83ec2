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


def remove_stale_temps(dest: Path) -> None:
    """Remove what a killed `atomic_path(dest)` left beside `dest` (kill -9 runs no clean-up).
    Only under a lock that keeps every other writer of `dest` out."""
    dest = Path(dest)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


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
            raise UserError(
                f"{path} is in use by another {holder}; wait for it to finish, or write somewhere else"
            ) from None
        yield
    except BaseException:
        if created and not any(path.iterdir()):  # a failed start leaves no empty folder
            path.rmdir()
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_dir(path: Path, holder: str) -> Iterator[None]:
    """Read directory `path` under a shared lock: refused at once while `holder` holds it with
    `exclusive_dir` (a model still being trained); readers do not block each other."""
    import fcntl

    path = Path(path)
    if not path.is_dir():  # nothing to lock; the reader reports what is missing
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path} is being written by {holder}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def read_json(path: Path, writer: str, keys: tuple[str, ...] = (), kind: type = dict):
    """A stage output read back: JSON of type `kind` holding `keys`, else one line naming the
    file and the command that writes it (never a JSONDecodeError or KeyError later on)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (it is written by `{writer}`)")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path} is not valid JSON ({str(err)[:80]}); it is written by `{writer}`: run it again"
        ) from None
    missing = [k for k in keys if k not in value] if isinstance(value, dict) else []
    if not isinstance(value, kind) or missing:
        what = (
            f"no {', '.join(missing)}" if missing else f"a JSON {type(value).__name__}, not a {kind.__name__}"
        )
        raise UserError(f"{path} is malformed ({what}); it is written by `{writer}`: run it again")
    return value


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


def tree_listing(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(Path(root).rglob("*")) if p.is_file()
    }
