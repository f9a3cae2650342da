"""DCGAN on CIFAR-10 at 32x32.

    python -m dcgan_jax.train --config configs/cifar.py --workdir runs/cifar

G: z(100) -> 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x3 (BatchNorm + ReLU, tanh out).
D: 32x32x3 -> 16x16x64 -> 8x8x128 -> 4x4x256 (LeakyReLU 0.2, BatchNorm after the first)
-> linear -> 1 logit. 12.1M + 0.66M parameters. TFDS downloads CIFAR-10 (~160 MB) on the
first run. Recognisable object-like samples appear after a few thousand steps.
Compute: 20,000 steps x 64 images x 1.92 GFLOP = 2.5 PFLOP. The training step, measured
(python -m dcgan_jax.benchmark): 34,607 images/s on an H100 (fp32 with TF32; 43,416 with
--config.half_precision=True), i.e. under a minute of steps, so there the input pipeline
and logging set the pace; 62.8 images/s on a 2-core AVX-512 CPU VM (~5.7 hours). A Colab
T4 has not been measured.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "cifar10"
    config.image_size = 32
    config.channels = 3
    config.z_dim = 100
    config.g_features = 256  # hidden widths 1024, 512, 256
    config.d_features = 64  # widths 64, 128, 256
    config.d_head = "linear"
    config.batch_size = 64
    config.num_train_steps = 20_000
    config.learning_rate = 2e-4
    config.beta1 = 0.5
    config.beta2 = 0.999
    return config
