import numpy as np
import pytest
import tensorflow_datasets as tfds

from dcgan_jax import input_pipeline
from tests.conftest import tiny_config


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


@pytest.mark.parametrize(
    "dataset,channels,size", [("cifar10", 3, 32), ("mnist", 1, 32), ("fashion_mnist", 1, 32)]
)
def test_tfds_datasets_under_mock_data(dataset, channels, size):
    config = tiny_config(dataset=dataset, channels=channels, image_size=size, batch_size=4)
    with tfds.testing.mock_data(num_examples=10):
        batch = _take(input_pipeline.create_dataset(config, num_devices=2), 1)[0]
    assert batch.shape == (2, 2, size, size, channels) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0


def test_grayscale_to_rgb_conversion():
    config = tiny_config(channels=3, batch_size=4)
    batch = _take(input_pipeline.create_dataset(config, num_devices=1), 1)[0]
    assert batch.shape == (1, 4, 16, 16, 3)
    np.testing.assert_array_equal(batch[..., 0], batch[..., 2])
