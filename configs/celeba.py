"""The 64x64 model of pytorch/examples `dcgan/main.py` (nz=100, ngf=ndf=64, no biases).

    python -m dcgan_jax.train --config configs/celeba.py --workdir runs/celeba

G: z(100) -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3.
D: 64x64x3 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> 4x4 conv -> 1 logit.
3,576,704 + 2,765,568 parameters, exactly those of pytorch/examples, whose
netG_epoch_N.pth / netD_epoch_N.pth files `python -m dcgan_jax.convert` brings over.

Data: TFDS `celeb_a` (202,599 aligned 178x218 faces). The 108x108 center crop holds the
face (eyebrows to chin), as in most DCGAN CelebA setups; it is resized to 64x64.
`--config.crop_size=0` keeps the pytorch/examples preprocessing instead (resize the shorter
side to 64, center crop: more hair and background). TFDS's download of CelebA often fails
(Google Drive quotas): unpack img_align_celeba.zip anywhere and train on the folder with
`--config.dataset=folder:/path/to/img_align_celeba`, same crop.
Compute: 30,000 steps (~9.5 epochs) x 64 images x 2.29 GFLOP = 4.4 PFLOP. The training step,
measured (python -m dcgan_jax.benchmark): 24,659 images/s on an H100 (fp32 with TF32, JAX
alone, with the cuBLAS default; 32,784 with --config.half_precision=True before it), so
there JPEG decoding and the input pipeline set the pace; 113.7-118.5 images/s on a 2-core
Intel Xeon VM under train's allocator settings (~4.6 hours; 1.26-1.29x PyTorch in the same
process; 163-169 on the AMD EPYC (Zen 5) VM before). A Colab T4 has not been measured.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "celeb_a"
    config.image_size = 64
    config.crop_size = 108  # the face region of the aligned images
    config.g_features = 64  # ngf: hidden widths 512, 256, 128, 64
    config.d_head = "conv"
    config.shuffle_buffer_size = 10_000
    config.num_train_steps = 30_000
    return config
