import gzip

import numpy as np
import pytest

from vaectl.data.idx import IdxError, encode_idx, parse_idx, read_idx, read_images_labels, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_known_header_bytes():
    # MNIST labels: magic 0x00000801, then the count as big-endian uint32.
    assert encode_idx(np.array([7, 2], dtype=np.uint8)) == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 2])


def test_wrong_magic():
    with pytest.raises(IdxError, match="bad magic"):
        parse_idx(b"\x00\x01\x08\x01\x00\x00\x00\x01\x05")


def test_payload_shorter_than_header_says():
    raw = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))[:-10]
    with pytest.raises(IdxError, match="payload has"):
        parse_idx(raw)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((5, 28, 28), np.uint8)))[:-20])
    with pytest.raises(IdxError, match="truncated or corrupt gzip"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "i.gz", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "l.gz", np.zeros(3, np.uint8))
    with pytest.raises(IdxError, match="4 images but l.gz has 3 labels"):
        read_images_labels(tmp_path / "i.gz", tmp_path / "l.gz")


def test_wrong_image_dimensions(tmp_path):
    write_idx(tmp_path / "i.gz", np.zeros((4, 28, 27), np.uint8))
    write_idx(tmp_path / "l.gz", np.zeros(4, np.uint8))
    with pytest.raises(IdxError, match="N x 28 x 28"):
        read_images_labels(tmp_path / "i.gz", tmp_path / "l.gz")
