"""PNG grids of 28x28 images: samples, reconstructions, interpolation paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaectl.files import atomic_path


def image_grid(images: np.ndarray, ncol: int, pad: int = 2) -> np.ndarray:
    """(N, 28, 28) floats in [0, 1] -> one uint8 image, `ncol` tiles a row, white padding."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    nrow = -(-len(images) // ncol)
    tile = 28 + pad
    grid = np.ones((nrow * tile + pad, ncol * tile + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * tile : pad + r * tile + 28, pad + c * tile : pad + c * tile + 28] = img
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(Path(path)) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
