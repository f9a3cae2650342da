"""The 64x64 model of pytorch/examples `dcgan/main.py` (nz=100, ngf=ndf=64, no biases).

    python -m dcgan_jax.train --config configs/celeba.py --workdir runs/celeba

G: z(100) -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3.
D: 64x64x3 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> 4x4 conv -> 1 logit.
3,576,704 + 2,765,568 parameters, exactly those of pytorch/examples, whose
netG_epoch_N.pth / netD_epoch_N.pth files `python -m dcgan_jax.convert` brings over.

TFDS's `celeb_a` needs a manual download of the aligned images; see the README, or train on
a folder of images with `--config.dataset=folder:/path/to/images` once that dataset type exists.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "celeb_a"
    config.image_size = 64
    config.channels = 3
    config.z_dim = 100
    config.g_features = 64  # ngf: hidden widths 512, 256, 128, 64
    config.d_features = 64  # ndf: widths 64, 128, 256, 512
    config.d_head = "conv"
    config.shuffle_buffer_size = 10_000
    config.batch_size = 64
    config.num_train_steps = 30_000
    config.learning_rate = 2e-4
    config.beta1 = 0.5
    config.beta2 = 0.999
    return config
