"""The official MNIST-family files over an ordered mirror list (the user's mirrors, local
directories or URLs, then torchvision's), each archive checked by torchvision's md5 or a
pinned content sha256: what `vaectl fetch` splits and `vaectl ood` scores as novel sets.

Downloads are bounded: each socket wait by VAECTL_FETCH_TIMEOUT seconds (default 60), each
archive by MAX_ARCHIVE_BYTES, each decompressed file by its IDX header and the dataset's
known size. A failed mirror's partial file is deleted before the next mirror is tried.
"""

from __future__ import annotations

import gzip
import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from vaectl import UserError
from vaectl.data.idx import MAX_IDX_BYTES, read_images_labels

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}  # every supported full dataset's official sizes
MAX_ARCHIVE_BYTES = 64 << 20  # the largest official archive (Fashion-MNIST train images) is 26 MB

# sha256 of the *decompressed* IDX bytes, for mirrors that recompressed the official archives
# (so torchvision's archive md5 cannot match but the content is the same). Recorded from
# Debian's dataset-fashion-mnist 0.0~git20200523.55506a9 (built from the upstream repo).
CONTENT_SHA256 = {
    (
        "fashion-mnist",
        "train-images-idx3-ubyte.gz",
    ): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    (
        "fashion-mnist",
        "train-labels-idx1-ubyte.gz",
    ): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    (
        "fashion-mnist",
        "t10k-images-idx3-ubyte.gz",
    ): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    (
        "fashion-mnist",
        "t10k-labels-idx1-ubyte.gz",
    ): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def mirror_url(mirror: str) -> str:
    """A mirror as a URL prefix ending in '/': local directories become file:// URLs."""
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


def _content_sha256(path: Path) -> str | None:
    """sha256 of the decompressed bytes, or None for a broken gzip or one that inflates past
    any supported IDX file (checked while streaming, never held in memory)."""
    import hashlib

    digest, total = hashlib.sha256(), 0
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                total += len(block)
                if total > MAX_IDX_BYTES + 16:
                    return None
                digest.update(block)
    except (EOFError, OSError):
        return None
    return digest.hexdigest()


def fetch_timeout() -> float:
    raw = os.environ.get("VAECTL_FETCH_TIMEOUT", "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UserError(f"VAECTL_FETCH_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return seconds


DEADLINE_WAITS = 10  # a whole file may take ten socket waits (VAECTL_FETCH_TIMEOUT each), then it is given up


class TooSlow(TimeoutError):
    """A mirror that answers, but too slowly to finish a file before the deadline."""


def _retrieve(url: str, target: Path, timeout: float) -> None:
    """Copy `url` (file:// or http(s)://) to `target`: at most MAX_ARCHIVE_BYTES counted as
    they are read (whatever the source claims its size is), no socket wait longer than
    `timeout` seconds and no file longer than DEADLINE_WAITS of them. A local mirror's file
    must be a regular file (a link to /dev/zero never ends). A target left by an earlier
    mirror is deleted first, so it can never be mistaken for this mirror's file."""
    target.unlink(missing_ok=True)
    if url.startswith("file://"):
        source = open(url2pathname(urlparse(url).path), "rb")  # noqa: SIM115 - closed below
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            source.close()
            raise ValueError("not a regular file")
        read = source.read
    elif url.startswith(("http://", "https://")):
        request = urllib.request.Request(url, headers={"User-Agent": "vaectl"})
        source = urllib.request.urlopen(request, timeout=timeout)
        read = source.read1  # what has arrived: a trickle cannot hold one read forever
    else:
        raise ValueError("not a file, http or https URL")
    deadline = time.monotonic() + DEADLINE_WAITS * timeout
    with source, open(target, "wb") as out:
        total = 0
        for block in iter(lambda: read(1 << 16), b""):
            total += len(block)
            if total > MAX_ARCHIVE_BYTES:
                raise ValueError(f"larger than {MAX_ARCHIVE_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TooSlow
            out.write(block)


def _verify(dataset: str, filename: str, md5: str, target: Path) -> dict | None:
    """Which checksum the file matched, or None if it is not the file we expect."""
    from torchvision.datasets.utils import check_integrity

    if check_integrity(str(target), md5):
        return {"verified_by": "archive md5", "md5": md5}
    pinned = CONTENT_SHA256.get((dataset, filename))
    if pinned and _content_sha256(target) == pinned:
        return {"verified_by": "content sha256", "sha256": pinned}
    return None


def download_resources(
    dataset: str, resources: list[tuple[str, str]], mirrors: list[str], dest: Path
) -> dict[str, dict]:
    """Fetch each (filename, md5) from the first mirror that serves it intact.

    Returns {filename: {"verified_by": "archive md5" | "content sha256", <that hash>}}.
    Raises UserError listing every mirror tried and why each failed.
    """
    fetched: dict[str, dict] = {}
    timeout = fetch_timeout()
    for filename, md5 in resources:
        target, tried = dest / filename, []
        for mirror in mirrors:
            url = mirror_url(mirror) + filename
            try:
                _retrieve(url, target, timeout)
            except TooSlow:
                tried.append(f"{url} (not complete within {DEADLINE_WAITS * timeout:g} s)")
                continue
            except TimeoutError:
                tried.append(f"{url} (no answer within {timeout:g} s)")
                continue
            except (urllib.error.URLError, OSError, ValueError, RuntimeError) as err:
                reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
                tried.append(f"{url} (unreachable: {reason})")
                continue
            checked = _verify(dataset, filename, md5, target)
            if checked:
                fetched[filename] = checked
                break
            tried.append(f"{url} (checksum mismatch)")
        else:
            target.unlink(missing_ok=True)
            raise UserError(f"could not fetch {filename} for {dataset}; tried: " + "; ".join(tried))
    return fetched


PREFIXES = {"train": "train", "test": "t10k"}  # each official split's file names start so


def official_splits(
    dataset: str, parts: tuple[str, ...], user_mirrors: list[str], workdir: Path
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """The official `parts` ("train", "test") of a torchvision dataset, downloaded into
    `workdir` from the user's mirrors then torchvision's, each archive checked: ({part:
    (images, labels)}, {"name", "files": what each file was verified by})."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[dataset])
    wanted = tuple(PREFIXES[part] + "-" for part in parts)
    resources = [(name, md5) for name, md5 in cls.resources if name.startswith(wanted)]
    files = download_resources(dataset, resources, list(user_mirrors) + list(cls.mirrors), workdir)
    found = {
        part: read_images_labels(
            workdir / f"{PREFIXES[part]}-images-idx3-ubyte.gz",
            workdir / f"{PREFIXES[part]}-labels-idx1-ubyte.gz",
            SPLIT_SIZES[part],
        )
        for part in parts
    }
    return found, {"name": dataset, "files": files}
