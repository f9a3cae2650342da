"""Drawing images from a generator and laying them out as grids (no TensorFlow needed)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from PIL import Image

from dcgan_jax.state import TrainState


@jax.jit
def generate_eval(g_state: TrainState, z: jax.Array) -> jax.Array:
    """G(z) in inference mode (BatchNorm uses its running statistics): images in [-1, 1]."""
    return g_state.apply_fn(
        {"params": g_state.params, "batch_stats": g_state.batch_stats}, z, train=False
    )


def to_uint8(images) -> np.ndarray:
    """[-1, 1] float images -> uint8 in [0, 255] (NaN, from a diverged run, -> 0)."""
    images = np.nan_to_num(np.asarray(images, np.float32), nan=-1.0)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images, num_columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles (N, H, W, C) images in [-1, 1] into one uint8 (rows*H', cols*W', C) image."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    cols = num_columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a uint8 HWC image (C = 1 or 3) as PNG, creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
