"""DCGAN on CIFAR-10 at 32x32.

    python -m dcgan_jax.train --config configs/cifar.py --workdir runs/cifar

G: z(100) -> 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x3 (BatchNorm + ReLU, tanh out).
D: 32x32x3 -> 16x16x64 -> 8x8x128 -> 4x4x256 (LeakyReLU 0.2, BatchNorm after the first)
-> linear -> 1 logit. 12.1M + 0.66M parameters. TFDS downloads CIFAR-10 (~160 MB) on the
first run.
Compute: 20,000 steps x 64 images x 1.92 GFLOP = 2.5 PFLOP. The training step, measured
(python -m dcgan_jax.benchmark): 35,897 images/s on an H100 (fp32 with TF32; 46,061 with
--config.half_precision=True; JAX alone, with the cuBLAS default), i.e. under a minute of
steps, so there the input pipeline and logging set the pace; 166.1-170.4 images/s on a
2-core Intel Xeon VM under train's allocator settings (~2.1 hours; 1.41-1.43x PyTorch in
the same process, the README's latest table; 241-250 on the AMD EPYC (Zen 5) VM before).
A Colab T4 has not been measured.
"""

from dcgan_jax import default_config


def get_config():
    # The defaults describe this model (CIFAR-10, the paper's Adam settings): nothing differs.
    return default_config.get_config()
