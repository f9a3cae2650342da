"""DCGAN on MNIST, resized from 28x28 to 32x32, one channel.

    python -m dcgan_jax.train --config configs/mnist.py --workdir runs/mnist

The CIFAR-10 architecture with half the widths and a 1-channel output. TFDS downloads
MNIST (~11 MB) on the first run.
Compute: 5,000 steps x 64 images x 0.68 GFLOP = 0.22 PFLOP; a small share of what the
CIFAR-10 model takes (see configs/cifar.py for measured speeds). Not measured itself.
"""

from dcgan_jax import default_config


def get_config():
    config = default_config.get_config()
    config.dataset = "mnist"
    config.channels = 1
    config.g_features = 128  # hidden widths 512, 256, 128
    config.num_train_steps = 5_000
    return config
