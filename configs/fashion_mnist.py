"""DCGAN on Fashion-MNIST (clothing, 28x28 grayscale), resized to 32x32, one channel.

    python -m dcgan_jax.train --config configs/fashion_mnist.py --workdir runs/fashion_mnist

The MNIST model and schedule (configs/mnist.py, read from there) on TFDS `fashion_mnist`
(~30 MB download).
Compute: 5,000 steps x 64 images x 0.68 GFLOP = 0.22 PFLOP; a small share of what the
CIFAR-10 model takes (see configs/cifar.py for measured speeds). Not measured itself.
"""

import os

from dcgan_jax import default_config


def get_config():
    # Loaded by path, so this file works from any directory (configs/ is not a package).
    mnist = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py")
    config = default_config.load_config_file(mnist)
    config.dataset = "fashion_mnist"
    return config
