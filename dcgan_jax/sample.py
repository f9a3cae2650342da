"""Draw images from a trained generator.

    python -m dcgan_jax.sample --workdir runs/cifar --num 64 --out grid.png
    python -m dcgan_jax.sample --workdir runs/cifar --z z.npy --out images.npy

With --z, the latent vectors come from a (n, z_dim) float32 .npy file and the images are
written as an (n, H, W, C) float32 .npy in [-1, 1] (exactly G(z) in inference mode, to
compare with another implementation); otherwise --num random images are tiled into a PNG.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from dcgan_jax import checkpointing, sampling
from dcgan_jax.validation import UserError, exit_on_user_error


def load_latents(path: str, z_dim: int) -> np.ndarray:
    """A (n, z_dim) float32 array from a .npy file, or UserError naming what is wrong."""
    try:
        z = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read latent vectors from {path!r}: {e}") from e
    if z.ndim == 4 and z.shape[2:] == (1, 1):  # PyTorch's (n, nz, 1, 1) noise
        z = z[:, :, 0, 0]
    if z.ndim != 2 or z.shape[1] != z_dim:
        raise UserError(
            f"{path!r} holds an array of shape {z.shape}; this generator needs (n, {z_dim})."
        )
    return z.astype(np.float32)


def run(workdir: str, out: str, num: int, z_path: str | None, seed: int, step: int | None):
    config, state = checkpointing.load_latest(workdir, step)
    if z_path:
        z = load_latents(z_path, config.z_dim)
    else:
        z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (num, config.z_dim)))
    images = np.asarray(sampling.generate_eval(state.generator, z), np.float32)
    if out.endswith(".npy"):
        np.save(out, images)
    elif out.endswith(".png"):
        sampling.save_png(sampling.make_grid(images), out)
    else:
        raise UserError(f"--out {out!r} must end in .png (a grid) or .npy (the raw images).")
    print(f"Wrote {len(images)} images from step {int(state.step)} to {out}.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    with exit_on_user_error():
        run(f.workdir, f.out, f.num, f.z, f.seed, f.step)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training run directory (its checkpoints/ are read).")
    flags.DEFINE_string("out", "samples.png", "Output: .png grid or .npy float32 images.")
    flags.DEFINE_integer("num", 64, "Number of random images (ignored with --z).")
    flags.DEFINE_string("z", None, "Optional .npy of latent vectors, shape (n, z_dim).")
    flags.DEFINE_integer("seed", 0, "Seed for the random latent vectors.")
    flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
