"""Training images as a tf.data pipeline: (devices, per_device_batch, H, W, C) float32 in [-1, 1].

The order of examples is a pure function of (seed, epoch), so a run resumed at step t sees
exactly the batches an uninterrupted run would: the stream is the concatenation of
per-epoch shuffles, and step t starts at example t * batch_size of that stream.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dcgan_jax.validation import UserError

# TensorFlow only feeds the input pipeline; it must leave accelerator memory to JAX.
tf.config.set_visible_devices([], "GPU")

# 8x8 scikit-learn digits take values 0..16.
_DIGITS_MAX_VALUE = 16.0


def _to_model_format(image: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """uint8 HWC image of any size/channels -> uint8 (image_size, image_size, channels)."""
    if image.shape[-1] != channels:
        image = (
            tf.image.rgb_to_grayscale(image) if channels == 1 else tf.image.grayscale_to_rgb(image)
        )
    if image.shape[0] != image_size or image.shape[1] != image_size:
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


def load_digits_images() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, 8, 8, 1) in 0..255."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # float64 in [0, 16]
    return np.round(images * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]


def _tfds_images(name: str, data_dir: str | None) -> tf.data.Dataset:
    """The train split of a TFDS dataset as a dataset of uint8 images, in file order."""
    try:
        ds = tfds.load(name, split="train", data_dir=data_dir, shuffle_files=False)
    except Exception as e:  # TFDS raises many kinds (connection, checksum, manual-dir) errors.
        where = data_dir or "~/tensorflow_datasets"
        raise UserError(
            f"could not load TFDS dataset {name!r} into {where} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}). Fix: run once where the internet is reachable, "
            "or copy a prepared copy of the dataset there and pass --config.data_dir=DIR; "
            "or train offline on --config configs/digits.py."
        ) from e
    return ds.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE)


def source_images(config) -> tuple[tf.data.Dataset, int]:
    """All training images, converted to the model's size and channels, and their count."""
    if config.dataset == "digits":
        images = load_digits_images()
        ds = tf.data.Dataset.from_tensor_slices(images)
        num_examples = len(images)
    else:
        ds = _tfds_images(config.dataset, config.data_dir or None)
        num_examples = int(ds.cardinality())
        if num_examples < 0:  # unknown; count once
            num_examples = int(ds.reduce(0, lambda n, _: n + 1))
    ds = ds.map(
        lambda image: _to_model_format(image, config.image_size, config.channels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if num_examples < config.batch_size:
        raise UserError(
            f"dataset {config.dataset!r} has {num_examples} examples, fewer than "
            f"config.batch_size={config.batch_size}. Fix: a smaller --config.batch_size."
        )
    return ds, num_examples


def batched_stream(
    images: tf.data.Dataset,
    num_examples: int,
    *,
    batch_size: int,
    num_devices: int,
    seed: int,
    shuffle_buffer_size: int,
    start_step: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """An endless stream of (num_devices, batch_size // num_devices, H, W, C) float batches.

    Epoch e is `images` shuffled with seed (seed, e); the epochs are concatenated and
    batched with drop_remainder, so batches may straddle epochs. Starting at `start_step`
    skips exactly `start_step * batch_size` examples of that stream.
    """
    if cache:
        images = images.cache()  # decoded, resized uint8 images: decode once, not per epoch
    first_epoch, offset = divmod(start_step * batch_size, num_examples)
    seed = tf.constant(seed, tf.int64)

    def epoch(index):
        # A distinct, reproducible order per epoch (the op seed may be any int64).
        return images.shuffle(
            shuffle_buffer_size, seed=seed * 1_000_003 + index, reshuffle_each_iteration=False
        )

    per_device = batch_size // num_devices
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.skip(offset)
    ds = ds.batch(batch_size, drop_remainder=True)

    def to_model_input(batch):
        batch = tf.cast(batch, tf.float32) / 127.5 - 1.0
        return tf.reshape(batch, [num_devices, per_device, *batch.shape[1:]])

    ds = ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def create_dataset(config, num_devices: int, start_step: int = 0, source=None) -> tf.data.Dataset:
    """The training stream for `config`, positioned at `start_step`.

    `source` is `source_images(config)` when the caller has loaded it already.
    """
    images, num_examples = source if source is not None else source_images(config)
    return batched_stream(
        images,
        num_examples,
        batch_size=config.batch_size,
        num_devices=num_devices,
        seed=config.seed,
        shuffle_buffer_size=config.shuffle_buffer_size,
        start_step=start_step,
        cache=num_examples * config.image_size**2 * config.channels < 2**31,
    )
