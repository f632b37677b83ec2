"""Atomic writes and hashing: a failed stage never leaves half-written outputs behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vaectl import UserError

# What a command may replace (docs/reliability.md, "Destinations"): a plain file, or a folder
# all of whose files the new output writes again (or that `claim` recognises as this command's
# own earlier output); never a link, a device, a FIFO or a socket, never the working folder or
# one that holds it, and never a folder holding a file the new output does not have, so that
# no file of the user's is ever deleted.
Claim = Callable[[Path], "str | None"]  # what in an existing destination is not ours, or None


def _special(mode: int) -> str | None:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None


def check_destination(dest: Path, claim: Claim | None = None, folder: bool | None = None) -> None:
    """Refuse at once a destination no command replaces: a link, a device, a FIFO or socket,
    the working folder (or one above it), a file where the output is a folder (`folder`) or
    the reverse, or what `claim` says is not this command's own."""
    dest = Path(dest)
    _check_place(dest)
    if folder is not None:
        _check_kind(dest, folder)
    if claim and dest.exists():
        _refuse_foreign(dest, claim(dest))


def _check_kind(dest: Path, folder: bool) -> None:
    if dest.exists() and dest.is_dir() != folder:
        what = ("a folder", "a file") if dest.is_dir() else ("a file", "a folder")
        raise UserError(f"{dest} is {what[0]}, and this output is {what[1]}; write elsewhere")


def _check_place(dest: Path) -> None:
    if dest.is_symlink():
        raise UserError(
            f"{dest} is a symbolic link, which vaectl never replaces: remove it or write "
            f"elsewhere (a link into DVC's cache: `dvc unprotect {dest}` first)"
        )
    if not dest.exists():
        return
    special = _special(dest.stat().st_mode)
    if special:
        raise UserError(f"{dest} is {special}, not a file vaectl wrote; write elsewhere")
    here, target = Path.cwd().resolve(), dest.resolve()
    if target == here or target in here.parents:
        raise UserError(f"{dest} is the working folder or holds it; name a folder of its own")


def foreign_entry(old: Path, new: Path) -> str | None:
    """The first thing in folder `old` that folder `new` does not replace (a file it does not
    write again, a link, a device), or None: a folder is replaced only with all of its files."""
    for entry in sorted(old.rglob("*")):
        relative = entry.relative_to(old)
        if entry.is_symlink() or _special(entry.lstat().st_mode):
            return f"{relative} (not a plain file)"
        if entry.is_file() and not (new / relative).is_file():
            return str(relative)
    return None


def only_files(names: set[str]) -> Claim:
    """A claim for a folder whose outputs vary with the params (one figure per sweep, say):
    it is the command's own if it holds nothing but plain files named in `names`."""

    def claim(folder: Path) -> str | None:
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry.is_symlink() or not entry.is_file() or entry.name not in names:
                return entry.name
        return None

    return claim


def _check_swap(dest: Path, staged: Path, claim: Claim | None) -> None:
    _check_place(dest)
    if not dest.exists():
        return
    _check_kind(dest, staged.is_dir())
    _refuse_foreign(dest, claim(dest) if claim else (foreign_entry(dest, staged) if dest.is_dir() else None))


def _refuse_foreign(dest: Path, foreign: str | None) -> None:
    if foreign:
        raise UserError(
            f"{dest} holds {foreign}, which this command did not write; vaectl never deletes "
            "what it did not write: move it away or write elsewhere"
        )


def remove_stale_temps(dest: Path) -> None:
    """Remove what a killed `atomic_path(dest)` left beside `dest` (kill -9 runs no clean-up):
    staging folders whose process (named in the folder's name) is gone."""
    for stale in Path(dest).parent.glob(f".{Path(dest).name}.*.tmp"):
        pid = stale.name[len(Path(dest).name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_TEMP = re.compile(r"vaectl-[a-z]+-(\d+)-")  # what temporary_dir names, with its process id


@contextlib.contextmanager
def temporary_dir(prefix: str) -> Iterator[str]:
    """tempfile.TemporaryDirectory named with this process's id: a `kill -9` runs no clean-up,
    so each new one first removes this user's vaectl temporary folders whose process is gone."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob("vaectl-*"):
        found = STALE_TEMP.match(stale.name)
        try:
            ours = stale.is_dir() and not stale.is_symlink() and stale.stat().st_uid == os.getuid()
        except OSError:
            continue
        if found and ours and not _alive(int(found.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_path(dest: Path, claim: Claim | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `dest` (file or directory), if
    `dest` is one vaectl may replace (see above; `claim` recognises its own earlier output).

    On any exception the temporary path is removed and `dest` is left as it was; what a killed
    process staged beside `dest` is removed by the next call.
    """
    dest = Path(dest)
    check_destination(dest, claim)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    staged = tmp / dest.name
    try:
        yield staged
        _check_swap(dest, staged, claim)
        if dest.is_dir():
            _swap_dirs(dest, staged, tmp / (dest.name + ".old"))
        else:
            os.replace(staged, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_dirs(dest: Path, staged: Path, old: Path) -> None:
    """Put folder `staged` where folder `dest` is, moving `dest` to `old` (inside the staging
    folder, which is then removed). Two renames: a failed second one puts `dest` back, and
    Ctrl-C and SIGTERM are held until both are done, so that no interruption can leave
    neither folder in place."""
    with _signals_held():
        os.replace(dest, old)
        try:
            os.replace(staged, dest)
        except BaseException:
            os.replace(old, dest)
            raise


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Record Ctrl-C and SIGTERM instead of acting on them for the block, then deliver them.
    A handler swap, not a signal mask: Python runs its handlers in the main thread whichever
    thread the kernel hands the signal to (torch's and MLflow's threads block nothing)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python's handlers, and only it may set them
        return
    received: list[int] = []
    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler Python cannot put back
            held[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for number in received:
            signal.raise_signal(number)


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


def folder_sha256(root: Path) -> str:
    """The sha256 of a folder's listing (every file's relative path and sha256): what a stage
    records for a folder it writes. A link or anything but plain files and folders inside is
    refused, so that a record never vouches for what a link points at."""
    for entry in Path(root).rglob("*"):
        if entry.is_symlink() or _special(entry.lstat().st_mode):
            raise UserError(f"{entry} is not a plain file; no vaectl stage writes links or devices")
    return sha256_bytes(json.dumps(tree_listing(root), sort_keys=True).encode())


def tree_listing(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def drop_bytecode(root: Path) -> list[str]:
    """Remove every `__pycache__` folder under `root` (a downloaded copy of our own) and name
    them. Python writes one beside code it imports, into the artifact store too when MLflow
    loads a model from a local store in place; the copy must load the verified sources, not
    compiled files no listing covers."""
    dropped = sorted(p for p in Path(root).rglob("__pycache__") if p.is_dir() and not p.is_symlink())
    for cache in dropped:
        shutil.rmtree(cache)
    return [p.relative_to(root).as_posix() for p in dropped]
