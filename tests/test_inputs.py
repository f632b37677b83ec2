"""What `vaectl predict` reads, tried as an adversary would: files that declare more than
they hold, bombs, pickles, FIFOs, and images whose pixels mean something other than they
seem. Each is refused from its header in one line, or read as the digit it shows."""

import io
import os
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from vaectl import UserError, registry
from vaectl.registry import PNG_MAX_BYTES, PREDICT_MAX_ROWS, png_pixels, read_inputs

DIGIT = np.zeros((28, 28), np.uint8)
DIGIT[6:22, 12:16] = 255  # a bright "1" on black


def npy_header(shape, dtype="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()  # magic string included


def test_an_npy_declaring_more_than_it_holds_is_refused_from_its_header(tmp_path):
    (tmp_path / "liar.npy").write_bytes(npy_header((10_000_000, 784)) + b"\0" * 1000)  # 31 GB declared
    with pytest.raises(UserError, match=f"10,000,000 rows, more than {PREDICT_MAX_ROWS:,}"):
        read_inputs(tmp_path / "liar.npy", "reconstruct")
    (tmp_path / "short.npy").write_bytes(npy_header((50, 784)) + b"\0" * 1000)
    with pytest.raises(UserError, match="declares 50 x \\(784,\\) float32 values but holds only"):
        read_inputs(tmp_path / "short.npy", "reconstruct")
    (tmp_path / "wide.npy").write_bytes(npy_header((1, 10**9)))
    with pytest.raises(UserError, match="more than 100,000 rows of 784 values"):
        read_inputs(tmp_path / "wide.npy", "reconstruct")


def test_a_sparse_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "sparse.npy"
    with open(path, "wb") as handle:
        handle.write(npy_header((9_000_000, 784)))
        handle.truncate(9_000_000 * 784 * 4 + 128)  # 28 GB on paper, nothing on disk
    with pytest.raises(UserError, match="9,000,000 rows"):
        read_inputs(path, "reconstruct")


def test_an_npy_is_memory_mapped_not_loaded(tmp_path):
    np.save(tmp_path / "x.npy", np.full((5, 784), 0.5, np.float32))
    x, names, source = read_inputs(tmp_path / "x.npy", "reconstruct")
    assert isinstance(x, np.memmap) and names is None and x.shape == (5, 784)
    assert source == str(tmp_path / "x.npy")


def test_an_npz_zip_bomb_and_an_object_array_are_refused_unread(tmp_path):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as member:
        member.write(npy_header((150_000, 784), "|u1"))
        for _ in range(150_000 // 1000):
            member.write(b"\0" * 784_000)
    assert bomb.stat().st_size < 1 << 20  # 118 MB of pixels in a few hundred kB
    with pytest.raises(UserError, match="150,000 rows"):
        read_inputs(bomb, "reconstruct")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UserError, match="holds Python objects \\(pickles\\), which predict never loads"):
        read_inputs(tmp_path / "objects.npz", "reconstruct")
    np.savez(tmp_path / "many.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(UserError, match="holds arrays a, b; name the input x"):
        read_inputs(tmp_path / "many.npz", "reconstruct")
    with zipfile.ZipFile(tmp_path / "notes.npz", "w") as archive:  # a zip, but of no arrays
        archive.writestr("readme.txt", "hi")
        archive.writestr("x", "not an array")
    with pytest.raises(UserError, match="holds arrays none; name the input x"):
        read_inputs(tmp_path / "notes.npz", "reconstruct")
    (tmp_path / "x.json").write_text('{"inputs": [[0.5]]}')  # the request body of `serve`
    with pytest.raises(
        UserError, match="predict reads those or a folder of 28 x 28 PNGs; JSON is what `vaectl serve` takes"
    ):
        read_inputs(tmp_path / "x.json", "reconstruct")


def test_integer_latents_and_non_byte_integers_are_refused(tmp_path):
    np.save(tmp_path / "z.npy", np.ones((3, 2), np.uint8))
    with pytest.raises(UserError, match="uint8 latents; decode takes float latents"):
        read_inputs(tmp_path / "z.npy", "decode")
    assert read_inputs(tmp_path / "z.npy", "reconstruct")[0].dtype == np.uint8  # pixels: scaled later
    np.save(tmp_path / "i.npy", np.ones((3, 784), np.int64))
    with pytest.raises(UserError, match="int64 values; give floats .* or uint8 pixels"):
        read_inputs(tmp_path / "i.npy", "reconstruct")


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    os.mkfifo(tmp_path / "a.npy")
    (tmp_path / "pngs").mkdir()
    Image.fromarray(DIGIT).save(tmp_path / "pngs" / "0.png")
    os.mkfifo(tmp_path / "pngs" / "a.png")
    for path, message in [
        (tmp_path / "a.npy", "a.npy: not a regular file"),
        (tmp_path / "pngs", "a.png: not a regular file"),
    ]:
        result: list[str] = []
        worker = threading.Thread(target=lambda p=path, r=result: r.append(_refusal(p)), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), f"{path} blocked"
        assert message in result[0]


def _refusal(path):
    try:
        read_inputs(path, "reconstruct")
    except UserError as err:
        return str(err)
    return "accepted"


def test_a_huge_or_bomb_png_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    Image.new("L", (12000, 12000)).save(tmp_path / "big.png")  # 144 M pixels, ~140 kB on disk
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(UserError, match="12000 x 12000 pixels; the model takes 28 x 28"):
        png_pixels(tmp_path / "big.png")
    assert not decoded
    monkeypatch.undo()
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")  # past PIL's bomb limit
    with pytest.raises(UserError, match="bomb.png: "):
        png_pixels(tmp_path / "bomb.png")
    (tmp_path / "fat").mkdir()
    Image.fromarray(DIGIT).save(tmp_path / "fat" / "0.png")
    with open(tmp_path / "fat" / "0.png", "ab") as handle:
        handle.write(b"\0" * PNG_MAX_BYTES)
    with pytest.raises(UserError, match="more than a 28 x 28 PNG needs"):
        read_inputs(tmp_path / "fat", "reconstruct")


def test_a_folder_of_more_pngs_than_the_bound_is_refused_by_its_count(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "PREDICT_MAX_ROWS", 2)
    for i in range(3):
        Image.fromarray(DIGIT).save(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match="holds 3 PNGs, more than 2"):
        read_inputs(tmp_path, "reconstruct")


def _saved(tmp_path, image, name="d.png"):
    image.save(tmp_path / name)
    return png_pixels(tmp_path / name).reshape(28, 28)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(DIGIT),  # L
        lambda: Image.fromarray(DIGIT).convert("1"),
        lambda: Image.fromarray(np.stack([DIGIT] * 3, -1)),  # RGB
        lambda: Image.fromarray(DIGIT).convert("P"),  # palette
        lambda: Image.fromarray(np.stack([DIGIT] * 3 + [np.full_like(DIGIT, 255)], -1)),  # opaque RGBA
        lambda: Image.fromarray(np.stack([np.zeros_like(DIGIT)] * 3 + [DIGIT], -1)),  # digit in the alpha
        lambda: Image.fromarray(np.stack([np.zeros_like(DIGIT), DIGIT], -1), "LA"),
        lambda: Image.fromarray(DIGIT.astype(np.uint16) * 257),  # 16-bit, full range
    ],
)
def test_every_png_kind_reads_as_the_digit_it_shows(tmp_path, make):
    np.testing.assert_allclose(_saved(tmp_path, make()), DIGIT / 255.0, atol=1 / 255)


def test_a_dark_16_bit_png_keeps_its_levels_instead_of_clipping_to_white(tmp_path):
    dark = DIGIT.astype(np.uint16) * 40  # at most 10,200 of 65,535
    pixels = _saved(tmp_path, Image.fromarray(dark))
    assert pixels.max() == pytest.approx(10_200 / 65_535, abs=1e-6)


def test_a_digit_split_between_colour_and_transparency_is_refused(tmp_path):
    rgba = np.stack([DIGIT] * 3 + [255 - DIGIT // 2], -1)
    with pytest.raises(UserError, match="its digit is in both its colour and its transparency"):
        _saved(tmp_path, Image.fromarray(rgba))


def test_no_rows_and_a_link_loop_are_one_line_each(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 784), np.float32))
    with pytest.raises(UserError, match=r"empty.npy holds no values \(shape \(0, 784\)\)"):
        read_inputs(tmp_path / "empty.npy", "score")
    (tmp_path / "pngs").mkdir()
    Image.fromarray(DIGIT).save(tmp_path / "pngs" / "0.png")
    (tmp_path / "pngs" / "loop.png").symlink_to(tmp_path / "pngs" / "loop.png")
    with pytest.raises(UserError, match="loop.png: cannot be read"):
        read_inputs(tmp_path / "pngs", "reconstruct")


def test_the_projects_own_prepared_split_is_an_input(tmp_path, prepared):
    """data/prepared/test.npz holds images and labels: predict scores its images, and says so."""
    x, names, source = read_inputs(prepared / "test.npz", "reconstruct")
    assert x.shape == (50, 28, 28) and x.dtype == np.uint8 and names is None
    assert source == f"array images of {prepared / 'test.npz'}"
    np.savez(tmp_path / "both.npz", x=np.zeros((2, 784), np.float32), images=np.ones((3, 784), np.float32))
    assert read_inputs(tmp_path / "both.npz", "reconstruct")[0].shape == (2, 784)  # x first
