"""Training images as a tf.data pipeline: (devices, per_device_batch, H, W, C) float32 in [-1, 1].

Sources: TFDS datasets (cifar10, mnist, fashion_mnist, celeb_a, lsun/<category>),
scikit-learn's digits, and any folder of images (`folder:/path`). Each is converted to the
model's image size and channels by a centered square crop and an antialiased resize.

    python -m dcgan_jax.input_pipeline --config configs/cifar.py --benchmark

The order of examples is a pure function of (seed, epoch), so a run resumed at step t sees
exactly the batches an uninterrupted run would: the stream is the concatenation of
per-epoch orders (for folders and the digits, uniform random permutations; for TFDS a
window shuffle of the stored order), and step t starts at example t * batch_size of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

from dcgan_jax import report
from dcgan_jax.validation import (
    EPOCH_ORDERS,
    FOLDER_PREFIX,
    IMAGE_EXTENSIONS,
    UserError,
    describe_error,
    effective_epoch_order,
    list_image_files,
)

# TensorFlow only feeds the input pipeline; it must leave accelerator memory to JAX.
tf.config.set_visible_devices([], "GPU")

# 8x8 scikit-learn digits take values 0..16.
_DIGITS_MAX_VALUE = 16.0


def _to_model_format(
    image: tf.Tensor, image_size: int, channels: int, crop_size: int = 0
) -> tf.Tensor:
    """uint8 HWC image of any size/channels -> uint8 (image_size, image_size, channels).

    Takes a centered square (`crop_size` on a side, or the largest that fits when 0), so
    the aspect ratio is kept, then resizes it to `image_size` (antialiased). This equals
    "resize the shorter side, then center crop" up to resampling.
    """
    if image.shape[-1] != channels:
        if channels == 1:
            image = tf.image.rgb_to_grayscale(image[..., :3])
        elif image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        else:
            image = image[..., :3]  # RGBA -> RGB
    height, width = image.shape[0], image.shape[1]
    if not crop_size and height == width == image_size:
        return image  # already the model's format: leave the pixels untouched
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    if crop_size:
        side = tf.minimum(side, crop_size)
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    image = image[top : top + side, left : left + side]
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (image_size, image_size, channels))


def load_digits_images() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, 8, 8, 1) in 0..255."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # float64 in [0, 16]
    return np.round(images * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]


def _download_help(name: str, data_dir: str | None) -> str:
    where = data_dir or os.path.expanduser("~/tensorflow_datasets")
    manual = os.path.join(where, "downloads", "manual")
    text = (
        "Fix: run once where the internet is reachable; or copy a prepared copy of the "
        f"dataset into {where} (pass --config.data_dir=DIR for another place); or put the "
        f"downloaded archives in {manual} and run again; "
    )
    if name == "celeb_a":
        text += (
            "or unpack img_align_celeba.zip anywhere and train on it with "
            "--config.dataset=folder:/path/to/img_align_celeba."
        )
    elif name.startswith("lsun/"):
        text += (
            "or export the LSUN images to a directory (the LSUN repository's `export` "
            "command) and train on it with --config.dataset=folder:/path/to/images."
        )
    else:
        text += (
            "or train on your own images with --config.dataset=folder:/path/to/images, "
            "or offline on --config configs/digits.py."
        )
    return text


def _tfds_images(name: str, data_dir: str | None, split: str) -> tf.data.Dataset:
    """A split of a TFDS dataset as a dataset of uint8 images, in file order."""
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
    except Exception as e:  # TFDS raises many kinds (connection, checksum, manual-dir) errors.
        raise UserError(
            f"could not load TFDS dataset {name!r} ({describe_error(e, 300)}). "
            + _download_help(name, data_dir)
        ) from e
    # Without autotuning already here: an unknown split size is counted by a pass over it.
    images = ds.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE)
    return _without_autotuning(images)


def _without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` without tf.data's autotuning: parallel calls asked for as AUTOTUNE run at one
    per core (TensorFlow's starting value: min(16, cores)) and prefetch buffers still adapt,
    but no optimisation thread runs beside the iterator.

    Why: that thread sleeps between optimisations for periods that double up to 60 s, and
    destroying the iterator did not wake it. At the end of training, the iterator's deletion
    waited out the rest of the sleep: 15-22 s in 4 of 10 short training runs on the 2-core
    Intel Xeon VM (gdb: the main thread in `RootDataset::Iterator::~Iterator`, the model
    thread in `Model::OptimizeLoop`'s timed wait). On 2 cores autotuning has little to
    choose; the pipelines' throughput was the same with it off (two runs each, alternating,
    of `input_pipeline.measure_throughput`: cifar on TFDS mock data, cached, 195-204k images/s
    off against 167-280k on; a folder of JPEGs decoded every epoch 4,660-4,700 against
    4,540-4,570)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _process_share(num_examples: int, process_index: int, process_count: int) -> slice:
    """The contiguous, equal-sized block of examples that one process reads."""
    share = num_examples // process_count
    return slice(process_index * share, (process_index + 1) * share)


def _decode_file(path: tf.Tensor) -> tf.Tensor:
    """An image file as uint8 RGB. Every format decodes to 3 channels (BMP and GIF decode
    to nothing else); grayscale conversion, where wanted, comes after. expand_animations=False
    gives a GIF's first frame."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def readable_images(paths: list[str]) -> list[str]:
    """The subset of `paths` that decode, in order (each file is decoded once, in parallel)."""
    if not paths:
        return []
    indexed = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
    decoded = indexed.map(
        lambda i, path: (i, tf.shape(_decode_file(path))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    good = _without_autotuning(decoded.ignore_errors())  # bad files drop out here
    return [paths[int(i)] for i, _ in good.as_numpy_iterator()]


def _readable_folder_files(directory: str) -> list[str]:
    """Every readable image file under `directory`, sorted (unreadable ones are counted in
    a warning); UserError if there is none."""
    if not os.path.isdir(directory):
        raise UserError(
            f"image folder {directory!r} does not exist or is not a directory. "
            "Fix: --config.dataset=folder:/path/to/an/existing/folder."
        )
    paths = list_image_files(directory)
    started = time.perf_counter()
    good = readable_images(paths)
    if not good:
        raise UserError(
            f"image folder {directory!r} holds no readable images ({len(paths)} files with "
            f"image extensions {', '.join(IMAGE_EXTENSIONS)}, none decodable). "
            "Fix: point --config.dataset=folder:PATH at a folder of jpg/png/gif/bmp images."
        )
    skipped = len(paths) - len(good)
    message = (
        f"Image folder {directory}: {len(good)} images "
        f"(checked in {time.perf_counter() - started:.1f} s)"
    )
    if skipped:
        report.warning(
            f"{message}; skipped {skipped} unreadable or truncated file(s), e.g. "
            f"{sorted(set(paths) - set(good))[:3]}"
        )
    else:
        report.info(f"{message}.")
    return good


class ImageSource(NamedTuple):
    """A process's training images (uint8, in the model's format) and how many there are.

    `images` reads them in file order. `load`, where the source allows random access (the
    digits in memory, a folder's files), maps an example's index to its image: the stream
    then draws each epoch as a uniform permutation of the indices and decodes only what it
    reads. TFDS datasets have no random access (`load` is None)."""

    images: tf.data.Dataset
    num_examples: int
    load: Callable[[tf.Tensor], tf.Tensor] | None = None


def source_images(
    config, process_index: int | None = None, process_count: int | None = None
) -> ImageSource:
    """This process's share of the training images in the model's format, and its size.

    Each of `process_count` processes (default: JAX's) reads a disjoint, contiguous block of
    the training split, all blocks the same size (the remainder is left out). With
    `config.input_sharding == "global_batches"` every process reads the whole split.
    """
    if process_index is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    if config.input_sharding == "global_batches":
        process_index, process_count = 0, 1

    def to_model_format(image):
        return _to_model_format(image, config.image_size, config.channels, config.crop_size)

    load = None
    if config.dataset == "digits":
        images = load_digits_images()
        images = tf.constant(images[_process_share(len(images), process_index, process_count)])
        ds, num_examples = tf.data.Dataset.from_tensor_slices(images), int(images.shape[0])
        load = lambda index: to_model_format(tf.gather(images, index))
    elif config.dataset.startswith(FOLDER_PREFIX):
        files = _readable_folder_files(config.dataset[len(FOLDER_PREFIX) :])
        files = tf.constant(files[_process_share(len(files), process_index, process_count)])
        ds = tf.data.Dataset.from_tensor_slices(files).map(
            _decode_file, num_parallel_calls=tf.data.AUTOTUNE
        )
        num_examples = int(files.shape[0])
        load = lambda index: to_model_format(_decode_file(tf.gather(files, index)))
    else:
        split = "train"
        if process_count > 1:
            split = tfds.even_splits("train", n=process_count, drop_remainder=True)[process_index]
        ds = _tfds_images(config.dataset, config.data_dir or None, split)
        num_examples = int(ds.cardinality())
        if num_examples < 0:  # unknown; count once
            num_examples = int(ds.reduce(0, lambda n, _: n + 1))
    ds = _without_autotuning(ds.map(to_model_format, num_parallel_calls=tf.data.AUTOTUNE))
    local_batch = config.batch_size // process_count  # process_count is 1 for global_batches
    if num_examples < local_batch:
        raise UserError(
            f"dataset {config.dataset!r} has {num_examples} examples"
            + (f" per process ({process_count} processes)" if process_count > 1 else "")
            + f", fewer than the batch of {local_batch}. Fix: a smaller --config.batch_size."
        )
    return ImageSource(ds, num_examples, load)


def batched_stream(
    source: ImageSource,
    *,
    batch_size: int,
    num_devices: int,
    seed: int,
    shuffle_buffer_size: int,
    start_step: int = 0,
    cache: bool = True,
    rows: slice | None = None,
    epoch_order: str = "permutation",
) -> tf.data.Dataset:
    """An endless stream of (num_devices, per_device, H, W, C) float batches.

    Epoch e is the source's examples in an order drawn from (seed, e): with
    `epoch_order="permutation"` and a source with random access (`source.load`), a uniform
    random permutation of all of them, decoded lazily; otherwise (TFDS, or "window", the
    order of runs before permutations) the file order shuffled through a window of
    `shuffle_buffer_size` examples. The epochs are concatenated and batched with
    drop_remainder, so batches may straddle epochs. Starting at `start_step` skips exactly
    `start_step * batch_size` examples of that stream: with permutations as indices,
    without decoding them. With `rows`, only those rows of each batch are kept (this
    process's part of a global batch); per_device = (rows of a batch) // num_devices.
    `cache` keeps the decoded images in memory (decoded once, not every epoch).
    """
    if epoch_order not in EPOCH_ORDERS:
        raise ValueError(f"epoch_order must be one of {EPOCH_ORDERS}, got {epoch_order!r}")
    num_examples = source.num_examples
    first_epoch, offset = divmod(start_step * batch_size, num_examples)
    seed = tf.constant(seed, tf.int64)
    rows = rows or slice(0, batch_size)
    per_device = (rows.stop - rows.start) // num_devices

    def epoch_seed(index):
        # A distinct, reproducible order per epoch (the op seed may be any int64).
        return seed * 1_000_003 + index

    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    if epoch_order == "permutation" and source.load is not None:
        if cache:
            # Every image decoded once, in parallel, into one array; epochs gather from it.
            stored = tf.constant(np.stack(list(source.images.as_numpy_iterator())))

        def permutation(index):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_examples, dtype=tf.int64),
                seed=tf.stack([seed, index]),
            )
            return tf.data.Dataset.from_tensor_slices(order)

        indices = epochs.flat_map(permutation).skip(offset)  # indices: skipping is free
        indices = indices.batch(batch_size, drop_remainder=True)
        indices = indices.map(lambda batch: batch[rows.start : rows.stop])
        if cache:  # one gather per batch: per-image calls cost more than the copy
            ds = indices.map(
                lambda batch: tf.gather(stored, batch),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        else:
            ds = indices.unbatch()
            ds = ds.map(source.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(rows.stop - rows.start, drop_remainder=True)
    else:
        images = source.images.cache() if cache else source.images
        if offset:  # a new process's cache is empty: the skipped examples are decoded
            report.info(
                f"Resuming inside epoch {first_epoch}: reading past its first {offset:,} "
                "examples (decoded to be skipped: a window-shuffled order has no random "
                "access)."
            )

        def window_shuffled(index):
            return images.shuffle(
                shuffle_buffer_size, seed=epoch_seed(index), reshuffle_each_iteration=False
            )

        ds = epochs.flat_map(window_shuffled).skip(offset)
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda batch: batch[rows.start : rows.stop])

    def to_model_input(batch):
        batch = tf.cast(batch, tf.float32) / 127.5 - 1.0
        return tf.reshape(batch, [num_devices, per_device, *batch.shape[1:]])

    ds = ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return _without_autotuning(ds.with_options(options)).prefetch(tf.data.AUTOTUNE)


def create_dataset(
    config,
    num_devices: int,
    start_step: int = 0,
    source=None,
    process_index: int | None = None,
    process_count: int | None = None,
    cache: bool | None = None,
) -> tf.data.Dataset:
    """This process's training stream for `config`, positioned at `start_step`.

    Batches hold `config.batch_size // process_count` images (the process's part of the
    global batch) split over its `num_devices` devices: by default taken from the process's
    own share of the data; with `config.input_sharding == "global_batches"`, its rows of
    the single-process run's global batch. `source` is `source_images(config)` when the
    caller has loaded it already. The converted images are cached in memory when they take
    less than `config.cache_limit_gib`, unless `cache` says otherwise; process 0 says which.
    """
    if process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    process_index = process_index or 0
    source = source if source is not None else source_images(config)
    local_batch = config.batch_size // process_count
    rows = None
    if config.input_sharding == "global_batches":
        rows = slice(process_index * local_batch, (process_index + 1) * local_batch)
    return batched_stream(
        source,
        batch_size=config.batch_size if rows else local_batch,
        rows=rows,
        num_devices=num_devices,
        seed=config.seed if rows else share_seed(config.seed, process_index),
        shuffle_buffer_size=config.shuffle_buffer_size,
        start_step=start_step,
        cache=(
            _decide_cache(config, source.num_examples, process_index) if cache is None else cache
        ),
        epoch_order=effective_epoch_order(config),
    )


def share_seed(seed: int, process_index: int) -> int:
    """The shuffle seed of process `process_index`'s share: with one seed for all shares,
    the i-th image of every share would land in the same global batch every epoch. Process
    0 keeps `seed`, so a single-process run's order does not change."""
    if process_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0] % 2**31)


def _decide_cache(config, num_examples: int, process_index: int) -> bool:
    """Whether this process's decoded images fit under `config.cache_limit_gib`."""
    size_gib = num_examples * config.image_size**2 * config.channels / 2**30
    limit = config.cache_limit_gib
    cache = size_gib < limit
    if process_index == 0:
        if cache:
            report.info(
                f"Caching the {num_examples:,} decoded images in memory ({size_gib:.2f} GiB "
                f"< cache_limit_gib={limit:g}): later epochs skip decoding."
            )
        else:
            report.info(
                f"Not caching the {num_examples:,} decoded images ({size_gib:.2f} GiB >= "
                f"cache_limit_gib={limit:g}): every epoch decodes them again. With the memory "
                f"to spare, --config.cache_limit_gib={math.ceil(size_gib + 1)} caches them."
            )
    return cache


def measure_throughput(config, num_batches: int, cache: bool | None = None) -> dict[str, float]:
    """Images/s of the pipeline as training sees it, in two phases.

    The first epoch reads, decodes, crops and resizes every image (and caches the result
    when it fits in memory); later epochs of a cached dataset only shuffle, batch and
    convert. `num_batches` batches after the first epoch are timed for the second figure;
    with `cache=False` they decode, crop and resize every image again, as for datasets too
    big for memory.
    """
    started = time.perf_counter()
    source = source_images(config, 0, 1)
    dataset = create_dataset(config, 1, source=source, process_count=1, cache=cache)
    batches = dataset.as_numpy_iterator()
    batches_per_epoch = -(-source.num_examples // config.batch_size)
    for _ in range(batches_per_epoch):
        next(batches)
    first_epoch_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    elapsed = time.perf_counter() - started
    return {
        "examples": source.num_examples,
        "first_epoch_images_per_s": batches_per_epoch * config.batch_size / first_epoch_s,
        "images_per_s": num_batches * config.batch_size / elapsed,
    }


def main(argv) -> None:
    from dcgan_jax.validation import exit_on_user_error, validate_config

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS.benchmark:
        raise app.UsageError("pass --benchmark (measuring is what this entry point does)")
    config = flags.FLAGS.config
    cache = None if flags.FLAGS.cache else False
    with exit_on_user_error():
        validate_config(config, 1)
        # --mock_data: TFDS's random examples of the dataset's real shapes (no decoding).
        mock = flags.FLAGS.mock_data
        with (
            tfds.testing.mock_data(num_examples=flags.FLAGS.mock_examples)
            if mock
            else contextlib.nullcontext()
        ):
            result = measure_throughput(config, flags.FLAGS.num_batches, cache)
    shape = f"{config.image_size}x{config.image_size}x{config.channels}"
    print(
        f"{config.dataset}{' (mock data)' if flags.FLAGS.mock_data else ''} -> {shape}, "
        f"batch {config.batch_size}: {result['images_per_s']:,.0f} images/s over "
        f"{flags.FLAGS.num_batches} batches after the first epoch"
        f"{' (no cache: decoded again)' if cache is False else ''}; first epoch (load, decode, "
        f"crop, resize, cache) {result['first_epoch_images_per_s']:,.0f} images/s "
        f"({result['examples']:,} examples)"
    )


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_bool("benchmark", False, "Measure the pipeline's images/s (the only mode).")
    flags.DEFINE_integer("num_batches", 200, "Batches timed after the warm-up.")
    flags.DEFINE_bool("mock_data", False, "Use TFDS mock data of the dataset's shapes.")
    flags.DEFINE_integer("mock_examples", 5_000, "Mock examples, with --mock_data.")
    flags.DEFINE_bool("cache", True, "--nocache: decode every epoch, as for huge datasets.")
    flags.mark_flags_as_required(["config", "benchmark"])
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
