import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dcgan_jax import input_pipeline
from dcgan_jax.validation import ConfigError, UserError, validate_config
from tests import commands
from tests.conftest import tiny_config
from tests.test_models import _load_config


def _take(ds, n):
    return [batch for _, batch in zip(range(n), ds.as_numpy_iterator(), strict=False)]


def test_digits_batches_have_model_shape_and_range():
    config = tiny_config(batch_size=8)
    batches = _take(input_pipeline.create_dataset(config, num_devices=2), 3)
    for batch in batches:
        assert batch.shape == (2, 4, 16, 16, 1) and batch.dtype == np.float32
        assert batch.min() >= -1.0 and batch.max() <= 1.0
    # Real digits: dark background, bright strokes.
    assert batches[0].min() == -1.0 and batches[0].max() > 0.5


def test_stream_resumes_at_the_exact_example():
    # 1797 digits / 64 per batch: batches 25-30 straddle the first epoch boundary.
    config = tiny_config(batch_size=64)
    from_start = _take(input_pipeline.create_dataset(config, num_devices=1), 31)
    resumed = _take(input_pipeline.create_dataset(config, num_devices=1, start_step=27), 4)
    for a, b in zip(from_start[27:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_epochs_are_distinct_permutations_of_the_data():
    config = tiny_config(batch_size=1797 // 3)  # 3 batches = one epoch exactly
    batches = _take(input_pipeline.create_dataset(config, num_devices=1), 6)
    epoch0 = np.concatenate(batches[:3]).reshape(1797, -1)
    epoch1 = np.concatenate(batches[3:]).reshape(1797, -1)
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(np.unique(epoch0, axis=0), np.unique(epoch1, axis=0))


def test_device_count_only_reshapes_the_global_batch():
    config = tiny_config(batch_size=8)
    one = _take(input_pipeline.create_dataset(config, num_devices=1), 2)
    two = _take(input_pipeline.create_dataset(config, num_devices=2), 2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.reshape(8, -1), b.reshape(8, -1))


@pytest.mark.parametrize("epoch_order", ["permutation", "window"])
def test_pipelines_run_without_tf_datas_autotuning_thread(epoch_order):
    # That thread slept through its iterator's deletion: up to ~20 s at the end of training
    # (input_pipeline._without_autotuning). The source feeds the FID statistics and the
    # digits classifier; the stream feeds training.
    config = tiny_config(batch_size=8, epoch_order=epoch_order)
    source = input_pipeline.source_images(config, 0, 1)
    stream = input_pipeline.create_dataset(config, num_devices=1, source=source)
    assert source.images.options().autotune.enabled is False
    assert stream.options().autotune.enabled is False
    assert stream.options().deterministic is True  # the other option survives the merge
    assert _take(stream, 1)[0].shape == (1, 8, 16, 16, 1)


@pytest.mark.parametrize(
    "config_name,dataset,shape",
    [
        ("cifar", "cifar10", (32, 32, 3)),
        ("mnist", "mnist", (32, 32, 1)),
        ("fashion_mnist", "fashion_mnist", (32, 32, 1)),
        ("celeba", "celeb_a", (64, 64, 3)),
        ("lsun_bedroom", "lsun/bedroom", (64, 64, 3)),
    ],
)
def test_each_tfds_config_yields_model_batches_under_mock_data(config_name, dataset, shape):
    config = _load_config(config_name)
    assert config.dataset == dataset
    config.batch_size = 4
    validate_config(config, num_devices=2)
    with tfds.testing.mock_data(num_examples=10):
        stream = input_pipeline.create_dataset(config, num_devices=2)
        batches = _take(stream, 3)
    assert stream.options().autotune.enabled is False
    for batch in batches:
        assert batch.shape == (2, 2, *shape) and batch.dtype == np.float32
        assert -1.0 <= batch.min() and batch.max() <= 1.0
        assert batch.std() > 0.1  # mock pixels are uniform noise, not a constant


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_mixed_folder(root):
    """Images of several sizes, formats and modes; a truncated JPEG; a non-image '.png'."""
    white, black = np.uint8(255), np.uint8(0)
    # Wide image: a white center square between black side bars; the center crop is white.
    wide = np.full((40, 80, 3), black)
    wide[:, 20:60] = white
    _save(root / "wide.jpg", wide)
    # Tall solid red PNG in a nested folder: red, or gray 76 (ITU-R 601 luma) with 1 channel.
    _save(root / "nested" / "deeper" / "red.png", np.full((50, 30, 3), [255, 0, 0], np.uint8))
    _save(root / "nested" / "gray.PNG", np.full((20, 20), np.uint8(128)))  # mode L
    _save(root / "rgba.png", np.full((33, 33, 4), np.uint8(200)))  # alpha dropped
    _save(root / "palette.gif", np.full((17, 25), np.uint8(60)))  # GIFs store a palette
    _save(root / "small.bmp", np.full((8, 8, 3), np.uint8(10)))
    whole = (root / "wide.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "nested" / "not_an_image.png").write_bytes(b"hello")
    (root / "readme.txt").write_text("ignored: not an image extension")


def _folder_images(config):
    images, count = input_pipeline.source_images(config, 0, 1)[:2]
    return np.stack(list(images.as_numpy_iterator())), count


def test_folder_dataset_reads_mixed_files_and_skips_corrupt_ones(tmp_path, capsys):
    _make_mixed_folder(tmp_path)
    config = tiny_config(dataset=f"folder:{tmp_path}", channels=3, image_size=16, batch_size=6)
    validate_config(config, num_devices=2)
    images, count = _folder_images(config)
    assert count == 6 and images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert "skipped 2 unreadable or truncated file(s)" in capsys.readouterr().out
    paths = input_pipeline.readable_images(input_pipeline.list_image_files(str(tmp_path)))
    names = [os.path.basename(p) for p in paths]
    image = dict(zip(names, images, strict=True))
    assert image["wide.jpg"].min() > 240  # the black bars were cropped away (JPEG noise aside)
    np.testing.assert_array_equal(image["red.png"], np.full((16, 16, 3), [255, 0, 0]))
    np.testing.assert_array_equal(image["gray.PNG"], np.full((16, 16, 3), 128))
    np.testing.assert_array_equal(image["rgba.png"], np.full((16, 16, 3), 200))
    np.testing.assert_array_equal(image["small.bmp"], np.full((16, 16, 3), 10))
    np.testing.assert_array_equal(image["palette.gif"], np.full((16, 16, 3), 60))

    gray = tiny_config(dataset=f"folder:{tmp_path}", channels=1, image_size=16, batch_size=6)
    gray_images, _ = _folder_images(gray)
    assert gray_images.shape == (6, 16, 16, 1)
    red = gray_images[names.index("red.png")]
    assert np.all(np.abs(red.astype(int) - 76) <= 1)

    batch = _take(input_pipeline.create_dataset(config, num_devices=2), 1)[0]
    assert batch.shape == (2, 3, 16, 16, 3) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_empty_or_unreadable_folder_is_a_clear_error(tmp_path):
    config = tiny_config(dataset=f"folder:{tmp_path}")
    with pytest.raises(UserError, match=r"holds no readable images \(0 files"):
        input_pipeline.source_images(config, 0, 1)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match=r"holds no readable images \(1 files"):
        input_pipeline.source_images(config, 0, 1)
    with pytest.raises(ConfigError, match=r"is not an existing directory"):
        validate_config(tiny_config(dataset=f"folder:{tmp_path}/missing"), num_devices=1)


def _numbers(images):
    """Each image's identifying pixel value (the test images are constant fills)."""
    return [int(image.reshape(-1)[0]) for image in images]


def test_processes_read_disjoint_equal_shares_of_a_folder(tmp_path):
    for i in range(10):
        _save(tmp_path / f"{i:02d}.png", np.full((8, 8), np.uint8(i * 20)))
    config = tiny_config(dataset=f"folder:{tmp_path}", batch_size=4)
    whole = input_pipeline.source_images(config, 0, 1).images
    shares = [input_pipeline.source_images(config, p, 2) for p in range(2)]
    assert [share.num_examples for share in shares] == [5, 5]
    values = [_numbers(ds.as_numpy_iterator()) for ds in (share.images for share in shares)]
    assert not set(values[0]) & set(values[1])
    assert values[0] + values[1] == _numbers(whole.as_numpy_iterator())
    # Each process batches its half of the global batch, the same way every time.
    streams = [
        _take(input_pipeline.create_dataset(config, 1, source=s, process_count=2), 3)
        for s in shares
    ]
    assert all(b.shape == (1, 2, 16, 16, 1) for stream in streams for b in stream)
    again = _take(input_pipeline.create_dataset(config, 1, source=shares[0], process_count=2), 3)
    np.testing.assert_array_equal(np.stack(streams[0]), np.stack(again))


def test_processes_read_disjoint_equal_shares_of_digits():
    config = tiny_config()
    shares = [input_pipeline.source_images(config, p, 2) for p in range(2)]
    assert [share.num_examples for share in shares] == [898, 898]  # 1,797 // 2; one left out
    halves = [np.stack(list(ds.as_numpy_iterator())) for ds in (share.images for share in shares)]
    everything = np.stack(
        list(input_pipeline.source_images(config, 0, 1).images.as_numpy_iterator())
    )
    np.testing.assert_array_equal(np.concatenate(halves), everything[:1796])


class _NumberedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A real (prepared on disk) TFDS dataset: 21 8x8 images filled with 0, 1, ..., 20."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1))})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(21):
            yield i, {"image": np.full((8, 8, 1), i, np.uint8)}


def test_processes_read_disjoint_equal_shares_of_a_tfds_split(tmp_path, monkeypatch):
    builder = _NumberedImages(data_dir=str(tmp_path))
    builder.download_and_prepare()
    loaded_splits = []

    def load(name, split, data_dir, shuffle_files):
        loaded_splits.append(split)
        return builder.as_dataset(split=split, shuffle_files=shuffle_files)

    monkeypatch.setattr(input_pipeline.tfds, "load", load)
    config = tiny_config(dataset="mnist", image_size=16, batch_size=4)
    count = input_pipeline.source_images(config, 0, 1).num_examples
    assert count == 21
    shares = [input_pipeline.source_images(config, p, 2) for p in range(2)]
    assert [share.num_examples for share in shares] == [10, 10]
    values = [_numbers(ds.as_numpy_iterator()) for ds in (share.images for share in shares)]
    assert not set(values[0]) & set(values[1])
    assert set(values[0]) | set(values[1]) <= set(range(21))
    # Each process reads only its slice of the split, not the whole split.
    assert loaded_splits[0] == "train" and loaded_splits[1] != loaded_splits[2]


def test_failed_download_explains_manual_placement(monkeypatch):
    def load(*args, **kwargs):
        raise ConnectionError("Failed to connect to drive.google.com")

    monkeypatch.setattr(input_pipeline.tfds, "load", load)
    config = _load_config("celeba")
    with pytest.raises(UserError) as error:
        input_pipeline.source_images(config, 0, 1)
    message = str(error.value)
    assert "ConnectionError" in message and "downloads/manual" in message
    assert "--config.dataset=folder:/path/to/img_align_celeba" in message


def test_pipeline_benchmark_cli_prints_images_per_second():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcgan_jax.input_pipeline",
            "--config",
            os.path.join(commands.REPO, "configs", "digits.py"),
            "--benchmark",
            "--num_batches",
            "20",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"digits -> 16x16x1, batch 64: ([\d,]+) images/s", result.stdout)
    assert match and float(match.group(1).replace(",", "")) > 0


def test_grayscale_to_rgb_conversion():
    config = tiny_config(channels=3, batch_size=4)
    batch = _take(input_pipeline.create_dataset(config, num_devices=1), 1)[0]
    assert batch.shape == (1, 4, 16, 16, 3)
    np.testing.assert_array_equal(batch[..., 0], batch[..., 2])


def test_global_batches_give_each_process_its_rows_of_the_same_stream():
    config = tiny_config(batch_size=8, input_sharding="global_batches")
    single = _take(input_pipeline.create_dataset(config, 2, process_index=0, process_count=1), 3)
    parts = [
        _take(input_pipeline.create_dataset(config, 1, process_index=p, process_count=2), 3)
        for p in range(2)
    ]
    for step in range(3):
        together = np.concatenate([parts[0][step], parts[1][step]])  # (2 processes x 1 device)
        np.testing.assert_array_equal(together.reshape(8, -1), single[step].reshape(8, -1))


def test_cache_limit_decides_and_says_which_way(capsys):
    from dcgan_jax import input_pipeline

    config = tiny_config(image_size=64, channels=3, cache_limit_gib=4.0)
    # CelebA's 202,599 images at 64x64x3 take 2.32 GiB: cached under the default limit.
    assert input_pipeline._decide_cache(config, 202_599, process_index=0)
    assert "Caching the 202,599 decoded images in memory (2.32 GiB" in capsys.readouterr().out
    config.cache_limit_gib = 2.0
    assert not input_pipeline._decide_cache(config, 202_599, process_index=0)
    assert "--config.cache_limit_gib=4 caches them" in capsys.readouterr().out
    assert not input_pipeline._decide_cache(config, 202_599, process_index=1)
    assert capsys.readouterr().out == ""  # only process 0 speaks


def test_each_process_share_is_shuffled_with_its_own_seed():
    from dcgan_jax import input_pipeline

    config = tiny_config(batch_size=8)
    orders = []
    for process in range(2):
        ds = input_pipeline.create_dataset(config, 1, process_index=process, process_count=2)
        first = next(ds.as_numpy_iterator())
        orders.append(first)
    # Process 0 keeps the run's seed (a 1-process run's order is unchanged); process 1's
    # share is shuffled differently, not in lockstep with it.
    assert input_pipeline.share_seed(config.seed, 0) == config.seed
    seeds = {input_pipeline.share_seed(config.seed, p) for p in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**31 for s in seeds)
    assert orders[0].shape == orders[1].shape and not np.array_equal(orders[0], orders[1])


def _numbered_source(count: int, decoded: list | None = None):
    """A random-access source of `count` 1x2 images that encode their own index (high and
    low byte); `decoded` records every index that `load` reads."""
    import tensorflow as tf

    array = np.stack([np.array([[[i // 256], [i % 256]]], np.uint8) for i in range(count)])

    def read(index):
        if decoded is not None:
            decoded.append(int(index))
        return array[int(index)]

    def load(index):
        image = tf.py_function(read, [index], tf.uint8)
        return tf.ensure_shape(image, array.shape[1:])

    return input_pipeline.ImageSource(tf.data.Dataset.from_tensor_slices(array), count, load)


def _indices(batches) -> list[int]:
    levels = np.round((np.concatenate([b.reshape(-1, 2) for b in batches]) + 1.0) * 127.5)
    return [int(high) * 256 + int(low) for high, low in levels]


def _stream(source, order, seed=0, start_step=0, cache=False, batch_size=10, buffer=4):
    return input_pipeline.batched_stream(
        source,
        batch_size=batch_size,
        num_devices=1,
        seed=seed,
        shuffle_buffer_size=buffer,
        start_step=start_step,
        cache=cache,
        epoch_order=order,
    )


def test_each_epoch_is_a_uniform_permutation_not_a_window_shuffle():
    """A sorted folder must not reach training nearly in file order: with permutations the
    first example's place in an epoch is uniform over the epoch; a small window keeps it
    near the start (the old order, still used by TFDS datasets)."""
    count = 40
    source = _numbered_source(count)
    places = {"permutation": [], "window": []}
    for order, seeds in (("permutation", 60), ("window", 20)):
        for seed in range(seeds):
            epoch = _indices(_take(_stream(source, order, seed=seed), count // 10))
            assert sorted(epoch) == list(range(count))  # every example once per epoch
            places[order].append(epoch.index(0))
    quarters = np.bincount(np.array(places["permutation"]) * 4 // count, minlength=4)
    assert quarters.min() >= 5, quarters  # uniform: 15 expected in each quarter
    # A 4-wide window keeps example 0 near the start: its place is geometric, mean ~3.
    assert np.mean(places["window"]) < count / 8 < np.mean(places["permutation"]) / 2
    # Deterministic from (seed, epoch), and epochs differ.
    two = _indices(_take(_stream(source, "permutation", seed=7), 8))
    assert two == _indices(_take(_stream(source, "permutation", seed=7), 8))
    assert two[:count] != two[count:] and sorted(two[count:]) == list(range(count))


@pytest.mark.parametrize("cache", [False, True])
def test_resuming_skips_the_epochs_start_without_decoding_it(cache):
    decoded = []
    source = _numbered_source(1000, decoded)
    from_start = _indices(_take(_stream(source, "permutation", cache=cache), 6))
    decoded.clear()
    # Step 5 of batches of 10: the first 50 examples of epoch 0 are skipped.
    resumed = _indices(_take(_stream(source, "permutation", start_step=5, cache=cache), 1))
    assert resumed == from_start[50:60]
    if not cache:  # (a cached source decodes everything once, in file order, up front)
        assert not set(decoded) & set(from_start[:50]), "skipped examples were decoded"


def test_cached_stream_equals_the_decoded_one_rows_included():
    """The cache gathers whole batches from memory, the uncached stream decodes image by
    image: the same examples in the same places, also for one process's rows."""
    source = _numbered_source(95)  # batches straddle the epochs' ends
    for rows in (None, slice(4, 10)):
        streams = [
            input_pipeline.batched_stream(
                source,
                batch_size=10,
                rows=rows,
                num_devices=2,
                seed=3,
                shuffle_buffer_size=4,
                start_step=7,  # inside epoch 0, and the stream runs on into epoch 2
                cache=cache,
            )
            for cache in (False, True)
        ]
        decoded, cached = (_indices(_take(stream, 20)) for stream in streams)
        assert decoded == cached and len(decoded) == 20 * (6 if rows else 10)


def test_folders_and_digits_permute_while_tfds_keeps_its_window_and_old_runs_resume():
    from dcgan_jax import checkpointing, default_config
    from dcgan_jax.validation import effective_epoch_order

    digits, folder, tfds_config = (
        tiny_config(),
        tiny_config(dataset="folder:/data"),
        tiny_config(dataset="cifar10"),
    )
    assert effective_epoch_order(digits) == effective_epoch_order(folder) == "permutation"
    assert effective_epoch_order(tfds_config) == "window"
    # A checkpoint from before permutations (no epoch_order: the window order) resumes a
    # TFDS run unchanged, and refuses a digits run unless the old order is asked for.
    for config in (digits, tfds_config):
        legacy = config.copy_and_resolve_references()
        del legacy["epoch_order"]
        legacy = default_config.upgrade_legacy_fields(legacy)
        if config is tfds_config:
            checkpointing.check_compatible(legacy, config, "ckpts")
        else:
            with pytest.raises(UserError, match="epoch_order: checkpoint 'window' vs now"):
                checkpointing.check_compatible(legacy, config, "ckpts")
            config.epoch_order = "window"
            checkpointing.check_compatible(legacy, config, "ckpts")
