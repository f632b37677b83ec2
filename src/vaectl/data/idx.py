"""IDX files (the MNIST container format): read with strict checks, write for tests and mirrors.

Format: 2 zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the data in big-endian order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from vaectl import UserError

TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODE_OF = {dtype.newbyteorder("="): code for code, dtype in TYPE_CODES.items()}


# the largest IDX payload any supported dataset has: 60,000 images of 28 x 28 bytes
MAX_IDX_BYTES = 60_000 * 28 * 28


class IdxError(UserError):
    pass


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The (decompressed) IDX bytes, read no further than the header says plus one byte: a
    gzip that inflates beyond its header, or a header beyond `max_bytes`, is refused before
    it is read, so a small archive cannot fill memory."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            head = f.read(4)
            ndim = head[3] if len(head) == 4 else 0
            head += f.read(4 * ndim)
            if len(head) == 4 + 4 * ndim and ndim and head[2] in TYPE_CODES:
                shape = struct.unpack(f">{ndim}I", head[4:])
                size = int(np.prod(shape, dtype=np.int64)) * TYPE_CODES[head[2]].itemsize
                if size > max_bytes:
                    raise IdxError(
                        f"{path}: IDX header declares shape {tuple(shape)} ({size} bytes), "
                        f"more than the {max_bytes} bytes allowed"
                    )
                return head + f.read(size + 1)  # one byte more shows trailing garbage
            return head
    except (EOFError, OSError, zlib.error) as err:
        raise IdxError(f"{path}: truncated or corrupt gzip ({err})") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a native-endian array, checking header and payload size."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in TYPE_CODES:
        raise IdxError(f"{name}: not an IDX file (bad magic {raw[:4].hex() or 'empty'})")
    dtype, ndim = TYPE_CODES[raw[2]], raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise IdxError(f"{name}: IDX header declares {ndim} dimensions but is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    payload = memoryview(raw)[4 + 4 * ndim :]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise IdxError(
            f"{name}: IDX header says shape {tuple(shape)} ({expected} bytes) "
            f"but the payload has {len(payload)} bytes"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    return parse_idx(_read_bytes(path, max_bytes), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in CODE_OF:
        raise IdxError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, CODE_OF[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(native.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as IDX; gzip-compressed when the name ends in .gz."""
    data = encode_idx(array)
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def read_images_labels(
    images_path: Path, labels_path: Path, max_count: int = MAX_IDX_BYTES // 784
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image/label IDX pair and check they describe the same N 28x28 uint8 images,
    N at most `max_count` (the dataset's known size bounds what is decompressed)."""
    images, labels = read_idx(images_path, max_count * 784), read_idx(labels_path, max_count)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IdxError(
            f"{images_path}: expected uint8 images of shape N x 28 x 28, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxError(f"{labels_path}: expected a 1-D uint8 label vector, got {labels.shape}")
    if len(images) != len(labels):
        raise IdxError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    return images, labels
