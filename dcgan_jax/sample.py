"""Draw images from a trained generator (its EMA weights when the run keeps an EMA).

    python -m dcgan_jax.sample --workdir runs/cifar --num 64 --out grid.png
    python -m dcgan_jax.sample --workdir runs/cifar --z z.npy --out images.npy
    python -m dcgan_jax.sample --workdir runs/cifar --num 50000 --format png --out gen/
    python -m dcgan_jax.sample --workdir runs/cifar --num 50000 --format npz --out gen.npz
    python -m dcgan_jax.sample --workdir runs/cifar --interpolate 8 --out walk.gif

With --z, the latent vectors come from a (n, z_dim) float32 .npy file and the images are
written as an (n, H, W, C) float32 .npy in [-1, 1] (exactly G(z) in inference mode, to
compare with another implementation). `--format png` writes one PNG per image into a
directory and `--format npz` one uint8 (n, H, W, C) array `images`, both generated and
written --batch_size images at a time, never all in memory. --interpolate K draws K
spherical walks between random latent pairs, --steps images each: a PNG grid (a walk per
row) or an animated GIF.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import jax
import numpy as np
from absl import app, flags

from dcgan_jax import checkpointing, sampling, xla_flags
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
    """A grid (.png) or the raw float images (.npy) of --num random or the --z latents."""
    if not out.endswith((".png", ".npy")):
        raise UserError(
            f"--out {out!r} must end in .png (a grid) or .npy (the raw images); for many "
            "images use --format png (a directory) or --format npz."
        )
    config, state = checkpointing.load_checkpoint(workdir, step)
    if z_path:
        z = load_latents(z_path, config.z_dim)
    else:
        z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (num, config.z_dim)))
    generator = sampling.sampling_generator(state, config)
    batch_stats = sampling.batch_statistics(config)
    images = np.asarray(sampling.generate_eval(generator, z, None, batch_stats), np.float32)
    if out.endswith(".npy"):
        np.save(out, images)
    else:
        sampling.save_png(sampling.enlarge(sampling.make_grid(images)), out)
    print(f"Wrote {len(images)} images from step {int(state.step)} to {out}.")


def _batches(config, state, num: int, batch_size: int, seed: int):
    """(index of the first image, uint8 images) of the sampling generator, batch by batch."""
    batches = sampling.generated_batches(
        sampling.sampling_generator(state, config),
        config.z_dim,
        num,
        batch_size,
        seed,
        sampling.batch_statistics(config),
    )
    for start, images in zip(range(0, num, batch_size), batches, strict=True):
        yield start, sampling.to_uint8(images)


def export(workdir: str, out: str, num: int, fmt: str, batch_size: int, seed: int, step):
    """Writes `num` generated images as PNG files in directory `out`, or as a uint8 .npz,
    batch by batch (memory use does not grow with `num`)."""
    config, state = checkpointing.load_checkpoint(workdir, step)
    if num < 1 or batch_size < 1:
        raise UserError("--num and --batch_size must be positive.")
    if fmt == "png":
        os.makedirs(out, exist_ok=True)
        width = max(6, len(str(num - 1)))
        for start, images in _batches(config, state, num, batch_size, seed):
            for i, image in enumerate(images):
                sampling.save_png(image, os.path.join(out, f"{start + i:0{width}d}.png"))
    elif fmt == "npz":
        if not out.endswith(".npz"):
            raise UserError(f"--out {out!r} must end in .npz with --format npz.")
        shape = (num, config.image_size, config.image_size, config.channels)
        directory = os.path.dirname(os.path.abspath(out))
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            array_path = os.path.join(tmp, "images.npy")
            array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
            for start, images in _batches(config, state, num, batch_size, seed):
                array[start : start + len(images)] = images
            array.flush()
            del array
            partial = os.path.join(tmp, "out.npz")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(array_path, "images.npy")  # streamed from disk
            os.replace(partial, out)
    else:
        raise UserError(f"--format {fmt!r}: use png (a directory of files) or npz.")
    print(f"Wrote {num} images from step {int(state.step)} to {out} ({fmt}).")


def interpolate(workdir: str, out: str, num_walks: int, num_steps: int, seed: int, step):
    """`num_walks` spherical latent walks of `num_steps` images: a PNG grid or a GIF."""
    config, state = checkpointing.load_checkpoint(workdir, step)
    if num_walks < 1 or num_steps < 2:
        raise UserError("--interpolate must be >= 1 and --steps >= 2.")
    z = sampling.interpolation_latents(seed, num_walks, num_steps, config.z_dim)
    generator = sampling.sampling_generator(state, config)
    batch_stats = sampling.batch_statistics(config)
    images = np.asarray(sampling.generate_eval(generator, z, None, batch_stats))
    if out.endswith(".png"):
        sampling.grid_image(images, num_columns=num_steps).save(out)
    elif out.endswith(".gif"):
        walks = images.reshape(num_walks, num_steps, *images.shape[1:])
        # Frame t shows every walk at step t; the animation runs forth and back.
        order = [*range(num_steps), *range(num_steps - 2, 0, -1)]
        frames = [sampling.grid_image(walks[:, t]) for t in order]
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=120, loop=0)
    else:
        raise UserError(f"--out {out!r} must end in .png or .gif with --interpolate.")
    print(f"Wrote {num_walks} latent walks of {num_steps} images to {out}.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_flags.apply_defaults()
    f = flags.FLAGS
    with exit_on_user_error():
        if f.interpolate:
            interpolate(f.workdir, f.out, f.interpolate, f.steps, f.seed, f.step)
        elif f.format:
            export(f.workdir, f.out, f.num, f.format, f.batch_size, f.seed, f.step)
        else:
            run(f.workdir, f.out, f.num, f.z, f.seed, f.step)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training run directory (its checkpoints/ are read).")
    flags.DEFINE_string("out", "samples.png", "Output: .png grid or .npy float32 images.")
    flags.DEFINE_integer("num", 64, "Number of random images (ignored with --z).", lower_bound=1)
    flags.DEFINE_string("z", None, "Optional .npy of latent vectors, shape (n, z_dim).")
    flags.DEFINE_integer("seed", 0, "Seed for the random latent vectors.", lower_bound=0)
    flags.DEFINE_integer(
        "step", None, "Checkpoint step to load (default: the latest).", lower_bound=0
    )
    flags.DEFINE_enum("format", "", ["", "png", "npz"], "Export --num images: png or npz.")
    flags.DEFINE_integer(
        "batch_size", 500, "Images generated per batch when exporting.", lower_bound=1
    )
    flags.DEFINE_integer(
        "interpolate", 0, "Number of latent walks to draw (0: none).", lower_bound=0
    )
    flags.DEFINE_integer("steps", 10, "Images per latent walk.", lower_bound=2)
    flags.mark_flags_as_required(["workdir"])
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
