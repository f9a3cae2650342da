"""Drawing images from a generator and laying them out as grids (no TensorFlow needed)."""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dcgan_jax.state import TrainState


def _apply_training_mode(apply_fn, variables, z: jax.Array):
    """(images, updated batch_stats) of a training-mode pass on one device. A network built
    for pmap synchronises BatchNorm over its axis: bind that axis with a size-1 vmap."""
    # The module: state.ModuleApply's, or a bound `module.apply`'s.
    module = getattr(apply_fn, "module", getattr(apply_fn, "__self__", None))
    axis_name = getattr(module, "axis_name", None)
    run = lambda z: apply_fn(variables, z, train=True, mutable=["batch_stats"])
    if axis_name is None:
        return run(z)
    images, updates = jax.vmap(run, axis_name=axis_name)(z[None])
    return images[0], jax.tree_util.tree_map(lambda x: x[0], updates)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate(apply_fn, variables, z: jax.Array, batch_statistics: bool = False) -> jax.Array:
    if not batch_statistics:
        return apply_fn(variables, z, train=False)
    # Training-mode BatchNorm on this batch; the updated running averages are dropped.
    return _apply_training_mode(apply_fn, variables, z)[0]


def batch_statistics(config) -> bool:
    """Whether `config` samples with BatchNorm's batch statistics rather than its running
    averages (`sample_batchnorm`; configs and checkpoints from before it: running)."""
    return config.get("sample_batchnorm", "running") == "batch"


def eval_variables(g_state: TrainState) -> dict:
    """The generator's weights and running statistics, on the device: what sampling needs
    (not the Adam moments, which are twice the weights' size)."""
    return jax.device_put({"params": g_state.params, "batch_stats": g_state.batch_stats})


def generate_eval(
    g_state: TrainState,
    z: jax.Array,
    variables: dict | None = None,
    batch_statistics: bool = False,
) -> jax.Array:
    """G(z) for sampling: images in [-1, 1]. BatchNorm uses its running averages, or with
    `batch_statistics` the statistics of this batch of `z` (as pytorch/examples draws its
    grids, in training mode); nothing in `g_state` changes either way. `variables` (from
    `eval_variables`) saves the copy to the device for repeated calls."""
    if variables is None:
        variables = eval_variables(g_state)
    return _generate(g_state.apply_fn, variables, z, batch_statistics)


@functools.partial(jax.jit, static_argnums=0)
def _scaled_batch_statistics(apply_fn, params, zeroed_stats, z: jax.Array):
    # From zero running statistics one training-mode pass leaves momentum x (the batch's
    # mean, the batch's unbiased variance) in them.
    variables = {"params": params, "batch_stats": zeroed_stats}
    return _apply_training_mode(apply_fn, variables, z)[1]["batch_stats"]


def standing_statistics(
    g_state: TrainState, z_dim: int, batch_size: int, num_batches: int = 16, seed: int = 0
) -> dict:
    """BatchNorm running statistics of `g_state`'s own weights: every layer's batch mean and
    (unbiased) variance averaged over `num_batches` batches of fresh noise. An EMA of the
    weights needs them: the live generator's running averages describe other weights
    (measured on the digits, README "Quality")."""
    from dcgan_jax.models import BatchNorm

    momentum = BatchNorm.momentum  # the models' (PyTorch's) 0.1
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, g_state.batch_stats)
    key = jax.random.PRNGKey(seed)
    total = None
    for b in range(num_batches):
        z = jax.random.normal(jax.random.fold_in(key, b), (batch_size, z_dim))
        stats = _scaled_batch_statistics(g_state.apply_fn, g_state.params, zeroed, z)
        total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
    scale = 1.0 / (num_batches * momentum)
    averaged = jax.tree_util.tree_map(
        lambda t, live: live if live.dtype == jnp.int32 else t * scale,
        total,
        g_state.batch_stats,
    )
    return averaged


def sampling_generator(state, config) -> TrainState:
    """The generator that grids, `sample` and `evaluate` draw from: the live one, or with an
    EMA the EMA weights with standing statistics of their own (`standing_statistics`)."""
    generator = state.sampling_generator()
    if state.keeps_ema:
        stats = standing_statistics(generator, config.z_dim, config.batch_size)
        generator = generator.replace(batch_stats=stats)
    return generator


def to_uint8(images) -> np.ndarray:
    """[-1, 1] float images -> uint8 in [0, 255] (NaN, from a diverged run, -> 0)."""
    images = np.nan_to_num(np.asarray(images, np.float32), nan=-1.0)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def quantize(images) -> np.ndarray:
    """Images in [-1, 1] as the 8-bit images `sample --format png` writes, back in [-1, 1]:
    what FID-style metrics should see of generated images (the real ones are 8-bit too)."""
    return to_uint8(images).astype(np.float32) / 127.5 - 1.0


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


def generated_batches(
    g_state: TrainState,
    z_dim: int,
    num: int,
    batch_size: int,
    seed: int,
    batch_statistics: bool = False,
):
    """G(z) (see `generate_eval`) for `num` latents drawn from `seed`, `batch_size` at a time
    (float images in [-1, 1]); batch b's latents come from fold_in(key, b * batch_size), so
    the images do not depend on anything but the seed and the batch size."""
    key = jax.random.PRNGKey(seed)
    variables = eval_variables(g_state)  # placed on the device once, for all batches
    for start in range(0, num, batch_size):
        count = min(batch_size, num - start)
        z = jax.random.normal(jax.random.fold_in(key, start), (count, z_dim))
        yield np.asarray(generate_eval(g_state, z, variables, batch_statistics))


def enlarge(grid: np.ndarray, min_width: int = 512) -> np.ndarray:
    """`grid` scaled up by the smallest whole factor that makes it at least `min_width`
    pixels wide (nearest neighbour: every pixel becomes a block, nothing is smoothed), so
    that grids of 16-32 px images are readable; wide grids are returned as they are."""
    factor = max(1, math.ceil(min_width / grid.shape[1]))
    return grid if factor == 1 else grid.repeat(factor, axis=0).repeat(factor, axis=1)


def grid_image(images, num_columns: int | None = None) -> Image.Image:
    """(N, H, W, C) images in [-1, 1] as one PIL image, at least 512 px wide (`enlarge`),
    for notebooks and files."""
    grid = enlarge(make_grid(images, num_columns))
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between latent vectors (rows of z0 and z1) at fractions t.

    Gaussian latents concentrate near a sphere; walking along it (rather than along the
    straight line, whose middle has an atypically small norm) keeps every point a typical
    input for the generator. Returns (len(z0), len(t), z_dim); nearly parallel pairs fall
    back to linear interpolation.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.asarray(t, np.float64)[None, :, None]
    unit0 = z0 / np.linalg.norm(z0, axis=-1, keepdims=True)
    unit1 = z1 / np.linalg.norm(z1, axis=-1, keepdims=True)
    omega = np.arccos(np.clip(np.sum(unit0 * unit1, axis=-1), -1.0, 1.0))[:, None, None]
    sin_omega = np.sin(omega)
    parallel = sin_omega < 1e-6
    safe = np.where(parallel, 1.0, sin_omega)
    w0 = np.where(parallel, 1.0 - t, np.sin((1.0 - t) * omega) / safe)
    w1 = np.where(parallel, t, np.sin(t * omega) / safe)
    return (w0 * z0[:, None] + w1 * z1[:, None]).astype(np.float32)


def interpolation_latents(seed: int, num_pairs: int, num_steps: int, z_dim: int) -> np.ndarray:
    """(num_pairs * num_steps, z_dim): for each of `num_pairs` random pairs of latents, the
    `num_steps` points of the spherical path from one to the other, endpoints included."""
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (2, num_pairs, z_dim)))
    path = slerp(z[0], z[1], np.linspace(0.0, 1.0, num_steps))
    return path.reshape(num_pairs * num_steps, z_dim)


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a uint8 HWC image (C = 1 or 3) as PNG, creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
