"""DCGAN on LSUN bedrooms at 64x64, the paper's headline dataset.

    python -m dcgan_jax.train --config configs/lsun_bedroom.py --workdir runs/lsun_bedroom

The 64x64 model of pytorch/examples (as configs/celeba.py). Data: TFDS `lsun/bedroom`,
3,033,042 images of varying size; the shorter side is resized and the center cropped to
64x64 (`crop_size=0`), as in the paper and pytorch/examples. The TFDS download is 43 GB and
needs `tensorflow-io` to read LMDB; alternatively export the images with the LSUN
repository's tools and train with `--config.dataset=folder:/path/to/bedroom_images`.
50,000 steps x 64 images is about one epoch, the paper's schedule for its bedroom samples.
Compute: 3.2M images x 2.29 GFLOP = 7.3 PFLOP. The training step of this model ran at
24,659 images/s on an H100 (configs/celeba.py, same model), about 2.2 minutes per epoch:
there the pace is set by JPEG decoding on the host CPU (~1,100-2,200 images/s per core measured;
`python -m dcgan_jax.input_pipeline --benchmark`), unless the decoded images are cached.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "lsun/bedroom"
    config.image_size = 64
    config.shuffle_buffer_size = 20_000  # 3M images do not fit in memory: a window shuffle
    config.g_features = 64  # ngf: hidden widths 512, 256, 128, 64
    config.d_head = "conv"
    config.num_train_steps = 50_000
    config.sample_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    return config
