import hashlib
import json

import numpy as np
import pytest
import torchvision.datasets

from vaectl import UserError
from vaectl.data import download, load_split
from vaectl.data import fetch as fetch_stage
from vaectl.data.idx import write_idx
from vaectl.data.splits import stratified_split
from vaectl.params import DataParams

from .conftest import synthetic_digits

FILES = {
    "train-images-idx3-ubyte.gz": ("train", "images"),
    "train-labels-idx1-ubyte.gz": ("train", "labels"),
    "t10k-images-idx3-ubyte.gz": ("test", "images"),
    "t10k-labels-idx1-ubyte.gz": ("test", "labels"),
}


def make_mirror(path, train=synthetic_digits(20, 1), test=synthetic_digits(4, 2)):
    """A local mirror of IDX archives; returns torchvision-style [(filename, md5)]."""
    path.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": dict(zip(("images", "labels"), train, strict=True)),
        "test": dict(zip(("images", "labels"), test, strict=True)),
    }
    resources = []
    for filename, (part, kind) in FILES.items():
        write_idx(path / filename, arrays[part][kind])
        resources.append((filename, hashlib.md5((path / filename).read_bytes()).hexdigest()))
    return resources


@pytest.fixture
def local_mnist(tmp_path, monkeypatch):
    """torchvision's MNIST pointed at nothing but our own checksums; mirrors come from us."""
    mirror = tmp_path / "mirror"
    resources = make_mirror(mirror)
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [])
    return mirror


def test_fetch_from_local_mirror_writes_splits_and_manifest(tmp_path, local_mnist):
    out = tmp_path / "prepared"
    manifest = fetch_stage.run(DataParams(name="mnist", val_fraction=0.25), out, [str(local_mnist)])
    counts = {s: d["count"] for s, d in manifest["splits"].items()}
    assert counts == {"train": 150, "val": 50, "test": 40}
    assert manifest["splits"]["val"]["class_counts"] == {str(c): 5 for c in range(10)}
    images, labels = load_split(out, "test")
    np.testing.assert_array_equal(images, synthetic_digits(4, 2)[0])
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["splits"]["test"]["images_sha256"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert all(f["verified_by"] == "archive md5" for f in on_disk["source"]["files"].values())


def test_mirror_fallback_order_and_checksum(tmp_path):
    good = tmp_path / "good"
    resources = make_mirror(good)
    corrupt = tmp_path / "corrupt"
    make_mirror(corrupt, train=synthetic_digits(20, 99))  # same names, other bytes
    missing = tmp_path / "missing"
    dest = tmp_path / "dl"
    dest.mkdir()
    fetched = download.download_resources(
        "mnist", resources, [str(missing), str(corrupt), good.as_uri()], dest
    )
    assert set(fetched) == set(FILES)
    for name in FILES:  # whatever mirror served a file, what landed is the checksummed original
        assert (dest / name).read_bytes() == (good / name).read_bytes()


def test_checksum_mismatch_everywhere_lists_what_was_tried(tmp_path):
    corrupt = tmp_path / "corrupt"
    make_mirror(corrupt)
    dest = tmp_path / "dl"
    dest.mkdir()
    resources = [("train-images-idx3-ubyte.gz", "0" * 32)]
    with pytest.raises(UserError) as err:
        download.download_resources("mnist", resources, [str(tmp_path / "nope"), str(corrupt)], dest)
    message = str(err.value)
    assert "\n" not in message
    assert message.index("nope") < message.index("corrupt")
    assert "unreachable" in message and "checksum mismatch" in message
    assert not (dest / "train-images-idx3-ubyte.gz").exists()


def test_ood_takes_another_datasets_test_images_as_fetch_does_and_only_those(tmp_path, local_mnist):
    """`vaectl ood` scores ood.other's official test set, downloaded and checked as fetch does:
    the t10k files only (the training archives are not fetched), the same images."""
    from vaectl import ood

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (local_mnist / name).unlink()  # fetching them would now fail
    np.testing.assert_array_equal(ood.other_test_set("mnist", [str(local_mnist)]), synthetic_digits(4, 2)[0])
    parts, source = download.official_splits("mnist", ("test",), [str(local_mnist)], tmp_path)
    assert list(parts) == ["test"] and sorted(source["files"]) == sorted(n for n in FILES if "t10k" in n)


def test_failed_fetch_leaves_previous_outputs_untouched(tmp_path, local_mnist, monkeypatch):
    out = tmp_path / "prepared"
    fetch_stage.run(DataParams(name="mnist"), out, [str(local_mnist)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [("train-images-idx3-ubyte.gz", "f" * 32)])
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch_stage.run(DataParams(name="mnist"), out, [str(local_mnist)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "prepared"]


def test_corrupt_idx_in_mirror_is_a_clear_error(tmp_path, local_mnist, monkeypatch):
    bad = local_mnist / "t10k-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros(3, np.uint8))  # 3 labels for 40 images
    resources = [(n, hashlib.md5((local_mnist / n).read_bytes()).hexdigest()) for n in FILES]
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    with pytest.raises(UserError, match="40 images but t10k-labels-idx1-ubyte.gz has 3 labels"):
        fetch_stage.run(DataParams(name="mnist"), tmp_path / "out", [str(local_mnist)])
    assert not (tmp_path / "out").exists()


def test_embedded_mnist_5k_is_stratified_and_seeded(tmp_path):
    manifest = fetch_stage.run(DataParams(), tmp_path / "a", [])
    assert {s: d["count"] for s, d in manifest["splits"].items()} == {"train": 4000, "val": 500, "test": 500}
    assert set(manifest["splits"]["train"]["class_counts"].values()) == {400}
    again = fetch_stage.run(DataParams(), tmp_path / "b", [])
    assert again == manifest
    other_seed = fetch_stage.run(DataParams(seed=1), tmp_path / "c", [])
    assert other_seed["splits"]["test"]["images_sha256"] != manifest["splits"]["test"]["images_sha256"]


def test_stratified_split_partitions_indices():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    rest, val, test = stratified_split(labels, (0.1, 0.2), seed=0)
    assert np.array_equal(np.sort(np.concatenate([rest, val, test])), np.arange(60))
    assert np.bincount(labels[val]).tolist() == [1, 2, 3]
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]


def test_a_split_left_empty_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="the val split would hold no images"):
        fetch_stage.run(DataParams(val_fraction=0.0001), tmp_path / "prepared", [])
    assert not (tmp_path / "prepared").exists()


class MirrorServer:
    """A local HTTP mirror in a thread, counting the requests it answers."""

    def __init__(self, root):
        import functools
        import http.server
        import threading

        outer = self
        self.requests = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_corrupt_mirror_falls_back_to_a_good_http_mirror(tmp_path):
    good, garbage = tmp_path / "good", tmp_path / "garbage"
    resources = make_mirror(good)
    garbage.mkdir()
    for name in FILES:
        (garbage / name).write_bytes(b"not a gzip at all")
    server = MirrorServer(good)
    try:
        dest = tmp_path / "dl"
        dest.mkdir()
        fetched = download.download_resources("mnist", resources, [str(garbage), server.url], dest)
    finally:
        server.close()
    assert set(fetched) == set(FILES) and server.requests == len(FILES)
    assert all((dest / n).read_bytes() == (good / n).read_bytes() for n in FILES)


def test_a_mirror_that_never_answers_times_out_and_the_next_one_serves(tmp_path, monkeypatch):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections (the kernel's backlog), never answers
    good = tmp_path / "good"
    resources = make_mirror(good)[:1]
    monkeypatch.setenv("VAECTL_FETCH_TIMEOUT", "0.3")
    dest = tmp_path / "dl"
    dest.mkdir()
    try:
        with pytest.raises(UserError, match=r"no answer within 0.3 s"):
            download.download_resources(
                "mnist", resources, [f"http://127.0.0.1:{silent.getsockname()[1]}/"], dest
            )
        fetched = download.download_resources(
            "mnist", resources, [f"http://127.0.0.1:{silent.getsockname()[1]}/", str(good)], dest
        )
    finally:
        silent.close()
    assert list(fetched) == [resources[0][0]]
    monkeypatch.setenv("VAECTL_FETCH_TIMEOUT", "soon")
    with pytest.raises(UserError, match="VAECTL_FETCH_TIMEOUT must be a positive number"):
        download.download_resources("mnist", resources, [str(good)], dest)


def test_a_mirror_file_that_is_a_device_is_refused_unread(tmp_path):
    """st_size of /dev/zero is 0: a size check from stat alone would copy it until the disk
    is full. A local mirror's file must be a regular file."""
    good, devices = tmp_path / "good", tmp_path / "devices"
    resources = make_mirror(good)[:1]
    devices.mkdir()
    (devices / resources[0][0]).symlink_to("/dev/zero")
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(UserError, match=r"unreachable: not a regular file"):
        download.download_resources("mnist", resources, [str(devices)], dest)
    assert download.download_resources("mnist", resources, [str(devices), str(good)], dest)


def test_a_mirror_that_trickles_is_given_up_at_the_deadline(tmp_path, monkeypatch):
    """One byte every 0.1 s never trips a per-wait timeout; the whole file has a deadline."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        while not stop.is_set():
            conn.sendall(b"x")
            time.sleep(0.1)
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    monkeypatch.setenv("VAECTL_FETCH_TIMEOUT", "0.3")
    dest = tmp_path / "dl"
    dest.mkdir()
    started = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"not complete within 3 s"):
            download.download_resources(
                "mnist", [("f.gz", "0" * 32)], [f"http://127.0.0.1:{listener.getsockname()[1]}/"], dest
            )
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 30
    assert not (dest / "f.gz").exists()


def test_vaectl_mirror_holds_urls_separated_by_whitespace(tmp_path, local_mnist, monkeypatch):
    from typer.testing import CliRunner

    from vaectl.cli import app

    server = MirrorServer(local_mnist)
    params = tmp_path / "params.yaml"
    params.write_text("data: {name: mnist}\n")
    monkeypatch.setenv("VAECTL_MIRROR", f"{tmp_path / 'nowhere'}  {server.url}\n")
    try:
        result = CliRunner().invoke(app, ["fetch", "-p", str(params), "--out", str(tmp_path / "out")])
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert server.requests == len(FILES)


def test_an_archive_that_inflates_past_its_content_is_not_read_into_memory(tmp_path, monkeypatch):
    import gzip

    from vaectl.data.idx import encode_idx, read_idx

    bomb = tmp_path / "bomb.gz"  # header: one image; then 64 MB of zeros (65 KB compressed)
    bomb.write_bytes(gzip.compress(encode_idx(np.zeros((1, 28, 28), np.uint8)) + bytes(64 << 20)))
    with pytest.raises(UserError, match=r"payload has 785 bytes"):  # read stopped at 784 + 1
        read_idx(bomb)
    with pytest.raises(UserError, match=r"declares shape \(1, 28, 28\) \(784 bytes\), more than the 100"):
        read_idx(bomb, max_bytes=100)
    monkeypatch.setattr(download, "MAX_IDX_BYTES", 1000)  # the content-hash path is bounded too
    assert download._content_sha256(bomb) is None


def test_sigterm_during_a_hanging_download_leaves_no_temporary_folder(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    (tmp_path / "params.yaml").write_text(
        f"data: {{name: mnist, mirrors: ['http://127.0.0.1:{silent.getsockname()[1]}/']}}\n"
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "VAECTL_FETCH_TIMEOUT": "60",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }  # torch's own, not fetch's
    try:
        fetch = subprocess.Popen(
            [sys.executable, "-m", "vaectl", "fetch"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        # the download has begun when the mirror is connected to (a signal that lands during
        # an import instead can be swallowed by a library's own except clause)
        silent.settimeout(120)
        connection, _ = silent.accept()
        assert any(scratch.iterdir())
        fetch.send_signal(signal.SIGTERM)
        _, err = fetch.communicate(timeout=30)
    finally:
        silent.close()
    connection.close()
    assert fetch.returncode != 0 and "Traceback" not in err
    assert list(scratch.iterdir()) == [] and not (tmp_path / "data").exists()
