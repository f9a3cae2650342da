"""The offline demo: scikit-learn's 1,797 handwritten 8x8 digits, upscaled to 16x16.

    python -m dcgan_jax.train --config configs/digits.py --workdir runs/digits

Needs no download (the images ship inside scikit-learn). On a 2-core CPU it runs in a few
minutes and the sample grids in runs/digits/samples/ show recognisable digits.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "digits"
    config.image_size = 16
    config.channels = 1
    config.shuffle_buffer_size = 2_000  # the whole dataset
    config.z_dim = 32
    config.g_features = 32  # hidden widths 64, 32
    config.d_features = 32  # widths 32, 64
    config.num_train_steps = 3_000
    config.sample_every_steps = 500
    return config
