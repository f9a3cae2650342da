"""DCGAN generator and discriminator in Flax linen.

Every kernel is stored as a 4x4 `(kh, kw, in, out)` array that is exactly PyTorch's
kernel transposed (no spatial flip), so weights convert with a transpose and both
frameworks compute the same function. What differs is how the convolutions are
evaluated: XLA:CPU runs the gradient of a strided (transposed) convolution an order of
magnitude slower than a matrix product, so `UpConv` evaluates its 4x4 stride-2 transposed
convolution as one matrix product plus shifted adds and `DownConv` its strided convolution
as space-to-depth, im2col and one matrix product; both are exactly equivalent (the same
multiply-adds). `convolutions="lax"` selects the textbook `lax` formulation instead (on
GPUs and TPUs XLA hands it to cuDNN or the TPU's convolution units); `"mixed"` is `matmul`
except that D's wider layers take XLA's native convolution for the output and the kernel
gradient and the matrix product's input gradient (Winograd's algorithm on those of at least
2^23 multiply-adds per image), that G's layers whose input and output are both at least 256
channels wide take Winograd's algorithm (`winograd.py`: 9/16 of the multiplies), and that
the other matrix products take their kernel gradient on a written-out x^T where x is wide
and not large (all faster on XLA:CPU); `"winograd"` takes Winograd's algorithm on every
layer of both models.
The tests check that all of them agree. `resolve_convolutions` picks one per backend for
`config.convolutions="auto"`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dcgan_jax import winograd, xla_flags
from dcgan_jax.validation import CONVOLUTION_CHOICES, CONVOLUTIONS

# DCGAN initialisation (Radford et al., section 4): weights from N(0, 0.02).
dcgan_kernel_init = nn.initializers.normal(stddev=0.02)

KERNEL_SIZE = 4
# NHWC activations, HWIO kernels.
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def num_resolution_blocks(image_size: int) -> int:
    """Number of 2x resolution changes between a 4x4 feature map and `image_size`."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}.")
    return int(math.log2(image_size)) - 2


def generator_widths(base_features: int, image_size: int) -> list[int]:
    """Channel widths of the generator's hidden feature maps, from 4x4 upwards."""
    n = num_resolution_blocks(image_size)
    return [base_features * 2 ** (n - 1 - i) for i in range(n)]


def discriminator_widths(base_features: int, image_size: int) -> list[int]:
    """Channel widths of the discriminator's feature maps, from full resolution down to 4x4."""
    return [base_features * 2**i for i in range(num_resolution_blocks(image_size))]


def _pytorch_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Reference: PyTorch's ConvTranspose2d(4, stride=2, padding=1) as a dilated conv."""
    pad = KERNEL_SIZE - 1 - 1
    return lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        lhs_dilation=(2, 2),
        dimension_numbers=_DIMENSION_NUMBERS,
    )


# For each output phase a (row 2m + a), the (kernel tap, offset into the 1-padded per-input
# contributions) pairs that land on it: from o = 2i - 1 + k, row 2m takes tap 1 of input m
# and tap 3 of input m - 1; row 2m + 1 takes tap 2 of input m and tap 0 of input m + 1.
_PHASE_TAPS = {0: ((1, 1), (3, 0)), 1: ((2, 1), (0, 2))}


@jax.custom_vjp
def _product_transposing_for_kernel_gradient(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w`, whose gradient for `w`, x^T g, is a product of x^T written out in memory
    with g rather than XLA's dot that contracts the rows of both operands.

    XLA:CPU runs that contraction outside its YNN matrix-product library (Eigen's dot):
    measured on the shapes of the models' kernel gradients where it is used, 220-420
    GFLOP/s against 280-460 for the same product with x^T materialised first (one copy of
    x), e.g. cifar's D layer on 8x8 inputs 4.59 against 2.64 ms, G's first up-convolution
    53.0 against 44.9 ms. The copy pays where x is wide and not large
    (`_transposes_for_kernel_gradient`)."""
    return x @ w


def _product_fwd(x, w):
    return x @ w, (x, w)


def _product_bwd(residuals, g):
    x, w = residuals
    # The barrier keeps XLA from folding the transpose back into the dot.
    return g @ w.T, lax.optimization_barrier(x.T) @ g


_product_transposing_for_kernel_gradient.defvjp(_product_fwd, _product_bwd)


def _transposes_for_kernel_gradient(x: jax.Array) -> bool:
    """Whether `_mixed_product` writes x^T out for the kernel gradient: x at least 512 wide
    and at most 2^22 elements (16 MiB in float32). Measured (2-core AMD EPYC Zen 5, batch
    16-256): 1.09-1.74x on every such kernel gradient of the cifar and celeba models; on
    larger x the copy costs more than it saves (celeba's D layer on 8x8 inputs at batch
    256, 16M elements, 0.89x; a 128x128 model's, 8M, 0.71x), and on narrow ones (D's
    first layer, 48 wide; the input of celeba G's last layer, 64 wide) 0.54-0.72x."""
    return x.shape[1] >= 512 and x.size <= 2**22


def _mixed_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` for the `mixed` formulation (see `_transposes_for_kernel_gradient`)."""
    if _transposes_for_kernel_gradient(x):
        return _product_transposing_for_kernel_gradient(x, w)
    return x @ w


def _shifted(plane: jax.Array, row: int, col: int) -> jax.Array:
    """`plane[:, m + row - 1, n + col - 1]`, zero outside: the plane read at offset (row,
    col) of its 1-padded grid. One pad per plane (negative padding crops) rather than one
    pad of the whole 16-tap tensor: XLA:CPU fuses each into the sum that reads it, where
    the shared pad was written out in full (36-81 MiB per layer at batch 64)."""
    zero = jnp.zeros((), plane.dtype)
    return lax.pad(
        plane, zero, ((0, 0, 0), (1 - row, row - 1, 0), (1 - col, col - 1, 0), (0, 0, 0))
    )


def _matmul_conv_transpose(x: jax.Array, kernel: jax.Array, product=jnp.matmul) -> jax.Array:
    """ConvTranspose2d(4, stride=2, padding=1) as one matrix product and 16 shifted adds.

    Every input pixel is multiplied by all 16 taps at once, (B*H*W, C) @ (C, 16*O), which is
    exactly the transposed convolution's multiply-adds as one large GEMM (fast forward and
    backward on every backend); each output phase then sums four shifted tap planes. The
    intermediate is 16*O wide, less than a 16*C im2col buffer since widths shrink towards
    the output. `product` computes the matrix product (`_mixed_product` for `mixed`).
    """
    batch, height, width, c_in = x.shape
    c_out = kernel.shape[-1]
    taps = kernel.transpose(2, 0, 1, 3).reshape(c_in, 16 * c_out)
    y = product(x.reshape(-1, c_in), taps).reshape(batch, height, width, 16, c_out)
    # The 16 tap planes by one split, whose gradient is one concatenation. Indexed one by
    # one, each plane's gradient is a zero-padded copy of all 16, summed: XLA:CPU computed
    # every element of the 16*O-wide gradient from 16 pads and 15 adds (90 ms of the celeba
    # step for one layer's 64 MiB); the same values, the step 1.10x faster (cifar, celeba).
    planes = [plane[:, :, :, 0] for plane in jnp.split(y, 16, axis=3)]
    rows = []
    for a in range(2):
        cols = []
        for b in range(2):
            cols.append(
                sum(
                    _shifted(planes[4 * kh + kw], i, j)
                    for kh, i in _PHASE_TAPS[a]
                    for kw, j in _PHASE_TAPS[b]
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # (batch, H, W, b, c_out)
    return jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, c_out)


def _pytorch_strided_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Reference: PyTorch's Conv2d(4, stride=2, padding=1)."""
    return lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DIMENSION_NUMBERS
    )


def _matmul_strided_conv(x: jax.Array, kernel: jax.Array, product=jnp.matmul) -> jax.Array:
    """Conv2d(4, stride=2, padding=1) as space-to-depth, im2col and one matrix product.

    With tap k = 2q + r, out[m] = sum_k x_pad[2m + k] w[k] = sum_{q, r} y[m + q, r] w[2q + r]
    where y[j, r] = x_pad[2j + r] is the padded input folded into 2x2 blocks: a stride-1
    2x2 window over y, gathered into (B*H/2*W/2, 16*C) rows and multiplied by the kernel
    (by `product`: `_mixed_product` for `mixed`).
    """
    batch, height, width, c_in = x.shape
    c_out = kernel.shape[-1]
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h2, w2 = (height + 2) // 2, (width + 2) // 2
    y = x.reshape(batch, h2, 2, w2, 2, c_in).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(batch, h2, w2, 4 * c_in)  # channels ordered (r, s, c)
    h_out, w_out = height // 2, width // 2
    # Stacked on a new axis, not concatenated along the channels: the same bytes, but XLA:CPU
    # copies whole 4C-wide rows for a major-axis concatenation and goes element by element
    # for a minor-axis one (1.3-1.6x slower on the 16-64 MiB buffers of D's middle layers).
    patches = jnp.stack(
        [y[:, q : q + h_out, p : p + w_out] for q in range(2) for p in range(2)], axis=3
    )  # (batch, h_out, w_out, (q, p), (r, s, c))
    # kernel[2q + r, 2p + s, c, o] -> folded[(q, p, r, s, c), o]
    folded = kernel.reshape(2, 2, 2, 2, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
    folded = folded.reshape(16 * c_in, c_out)
    return product(patches.reshape(-1, 16 * c_in), folded).reshape(batch, h_out, w_out, c_out)


@jax.custom_vjp
def _native_strided_conv_matmul_input_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Conv2d(4, stride=2, padding=1): XLA's own convolution for the output and the kernel
    gradient, the matrix-product formulation's for the input gradient.

    On XLA:CPU the native convolution computes the output and the kernel gradient of D's
    wider layers without an im2col buffer in memory (1.3-2x faster per layer than building
    one, at batches up to 64), but its input gradient (a convolution with a dilated input)
    is slower than the matrix product's, which needs no im2col buffer either.
    """
    return _pytorch_strided_conv(x, kernel)


def _native_conv_fwd(x, kernel):
    return _pytorch_strided_conv(x, kernel), (x, kernel)


def _native_conv_bwd(residuals, grad):
    x, kernel = residuals
    # Where the kernel gradient is not used (D's pass in G's update) XLA removes its
    # computation; the matrix product's forward pass, unused here, is removed too.
    _, input_pullback = jax.vjp(lambda x: _matmul_strided_conv(x, kernel), x)
    _, kernel_pullback = jax.vjp(lambda kernel: _pytorch_strided_conv(x, kernel), kernel)
    return input_pullback(grad)[0], kernel_pullback(grad)[0]


_native_strided_conv_matmul_input_grad.defvjp(_native_conv_fwd, _native_conv_bwd)


# `mixed` takes Winograd's algorithm (9/16 of the multiplies, `winograd.py`) for G's layers
# whose input and output are both at least this wide. Measured per layer alone, forward plus
# both gradients, batch 64 (2-core AMD EPYC Zen 5, 2026-12-05 06:08 UTC), ms: cifar's 4x4
# 1024->512 and 8x8 512->256 layers 93.6 and 85.1 against 122.8 and 117.3; celeba's 4x4
# 512->256 24.9 against 30.0, its 8x8 256->128 28.4 against 32.7 and 16x16 128->64 38.7
# against 38.3 (narrow products run below the matrix product's rate). At 128 celeba's step
# ran 2% faster for a second more of compilation (first step 10.1 s with XLA's MLIR fusion
# emitters, which the CLIs no longer use: `xla_flags.CPU_FUSION_EMITTERS`).
WINOGRAD_MIN_CHANNELS = 256
# ... and for D's layers (wider than an image) that do at least this many multiply-adds per
# image: celeba's three (2^25 each: 32x32 64->128, 16x16 128->256, 8x8 256->512) and
# cifar's two (2^23 each: 16x16 64->128, 8x8 128->256). Measured per layer on a 2-core AMD
# EPYC Zen 5 (2026-12-05 08:15-08:25 UTC, XLA's legacy fusion emitters) at batch 64, forward
# plus both gradients: celeba's 28.5, 17.6 and 16.0 ms against 32.2, 24.0 and 20.6 (the
# input gradients 11.2, 6.8, 6.7 against 17.3, 9.7, 8.6); in the celeba step (one process,
# alternating windows) 1.12x and 1.20x on all three. Cifar's two layers moved its step by
# 1.005x and 0.98x there, noise; on the 2-core Intel Xeon VM (2026-12-05 15:43-15:50 UTC,
# the whole step, one process, 10 alternating windows) by 1.020x, 1.033x and 1.037x at
# batch 64, 1.04x at 256 and 0.997x at 16, for 1.9-2.2 s more compilation (the first step
# stays under 10 s). Measured in float32 (bfloat16 rounds the transforms: about 3x the
# matrix product's error, within the bfloat16 bound of the tests; other batch sizes in the
# README's sweep).
WINOGRAD_MIN_DOWN_MULTIPLY_ADDS = 2**23


def _takes_winograd(x: jax.Array, kernel: jax.Array) -> bool:
    return min(x.shape[-1], kernel.shape[-1]) >= WINOGRAD_MIN_CHANNELS


def _down_takes_winograd(x: jax.Array, kernel: jax.Array) -> bool:
    _, height, width, c_in = x.shape
    if c_in <= 3 or height % 4 or width % 4:
        return False
    per_image = (height // 2) * (width // 2) * c_in * kernel.shape[-1] * KERNEL_SIZE**2
    return per_image >= WINOGRAD_MIN_DOWN_MULTIPLY_ADDS


def _mixed_strided_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Conv2d(4, stride=2, padding=1), each layer by what XLA:CPU runs faster: Winograd's
    algorithm on the layers that do at least `WINOGRAD_MIN_DOWN_MULTIPLY_ADDS` per image;
    the native convolution with the matrix product's input gradient on the other layers
    wider than an image's 1-3 channels; the matrix-product formulation on the image layer.

    Measured per layer (README, "Speed"; 2-core AMD EPYC Zen 5), forward and kernel
    gradient: the native pass on celeba D's 32x32, 16x16 and 8x8 layers 24.3, 22.9 and
    20.7 ms against the matrix product's 46.8, 32.2 and 25.1 at batch 64, and ahead at
    batch 16 and 256 too; on the image layer 5.1 against 3.3 ms.

    That is with XLA's own convolution kernels, which the CLIs select
    (`xla_flags.CPU_CONVOLUTIONS`). Where XLA hands convolutions to its YNN library
    (jaxlib 0.10 without that flag: `xla_flags.ynn_runs_convolutions`), the native pass
    is taken only on inputs of at least 16x16 at batches up to 64: on an 8x8 input YNN's
    forward pass is the slower one, and at a batch of 256 its kernel gradient is 1.3-2.2x
    slower than the matrix product's (the whole celeba step 0.80x at batch 256, 0.91x at
    128). The matrix products' kernel gradients as in `_mixed_conv_transpose`."""
    if _down_takes_winograd(x, kernel):
        return winograd.strided_conv(x, kernel)
    batch, height, width, c_in = x.shape
    native = c_in > 3
    if native and xla_flags.ynn_runs_convolutions():
        native = batch <= 64 and min(height, width) >= 16
    if native:
        return _native_strided_conv_matmul_input_grad(x, kernel)
    return _matmul_strided_conv(x, kernel, _mixed_product)


def _mixed_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """ConvTranspose2d(4, stride=2, padding=1) as `_matmul_conv_transpose`, with the kernel
    gradient's product taken on x^T written out where that is faster on XLA:CPU
    (`_mixed_product`); by Winograd's algorithm (faster still, `winograd.conv_transpose`)
    where input and output are both at least `WINOGRAD_MIN_CHANNELS` wide."""
    if _takes_winograd(x, kernel):
        return winograd.conv_transpose(x, kernel)
    return _matmul_conv_transpose(x, kernel, _mixed_product)


def _kernel_4x4(module: nn.Module, x: jax.Array, features: int) -> jax.Array:
    """The module's (4, 4, in, features) kernel, DCGAN-initialised, in `x`'s dtype."""
    shape = (KERNEL_SIZE, KERNEL_SIZE, x.shape[-1], features)
    return module.param("kernel", dcgan_kernel_init, shape).astype(x.dtype)


# The formulations of each strided convolution: the same function, different kernels.
# Read when a model is traced; compiled programs are shared between equal models (state.py),
# so a prototype that swaps entries within a process must call train.forget_compiled_programs().
# "mixed" differs from "matmul" in D's wider layers (XLA's native convolutions, Winograd's
# algorithm on those of at least `WINOGRAD_MIN_DOWN_MULTIPLY_ADDS` per image), in G's layers
# whose input and output are both at least `WINOGRAD_MIN_CHANNELS` wide (Winograd's) and in how the
# kernel gradients of the matrix products are taken (`_mixed_product`); G's other
# transposed convolutions are matrix products in both (XLA:CPU's native kernel gradient of
# a transposed convolution is 40-80x slower). Winograd's transforms have custom VJPs, so
# forward-mode differentiation (jax.jvp, jacfwd) does not pass through its layers.
FORMULATIONS = CONVOLUTIONS
_UP_CONV = {
    "matmul": _matmul_conv_transpose,
    "mixed": _mixed_conv_transpose,
    "winograd": winograd.conv_transpose,
    "lax": _pytorch_conv_transpose,
}
_DOWN_CONV = {
    "matmul": _matmul_strided_conv,
    "mixed": _mixed_strided_conv,
    "winograd": winograd.strided_conv,
    "lax": _pytorch_strided_conv,
}

# What `convolutions="auto"` picks on each backend: the formulation measured faster there
# (README, "Speed"). TPU keeps XLA's native convolutions without a measurement.
AUTO_CONVOLUTIONS = {"cpu": "mixed", "gpu": "matmul", "tpu": "lax"}


def resolve_convolutions(choice: str, backend: str | None = None) -> str:
    """The formulation (a `FORMULATIONS` entry) that `config.convolutions=choice` means on
    `backend` (default: JAX's default backend)."""
    if choice in FORMULATIONS:
        return choice
    if choice != "auto":
        raise ValueError(f"convolutions must be {CONVOLUTION_CHOICES}, got {choice!r}.")
    backend = backend or jax.default_backend()
    return AUTO_CONVOLUTIONS.get("gpu" if backend in ("cuda", "rocm") else backend, "lax")


class UpConv(nn.Module):
    """PyTorch's `ConvTranspose2d(in, features, 4, stride=2, padding=1, bias=False)`."""

    features: int
    convolutions: str = "matmul"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _UP_CONV[self.convolutions](x, _kernel_4x4(self, x, self.features))


class DownConv(nn.Module):
    """PyTorch's `Conv2d(in, features, 4, stride=2, padding=1, bias=False)`."""

    features: int
    convolutions: str = "matmul"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _DOWN_CONV[self.convolutions](x, _kernel_4x4(self, x, self.features))


class Dense4x4(nn.Module):
    """A 4x4 kernel applied without padding to/from a 1x1 map: a plain matrix product.

    `project=True` is the generator's first layer, `ConvTranspose2d(z_dim, features, 4, 1, 0)`
    on a 1x1 input: (batch, z_dim) -> (batch, 4, 4, features). `project=False` is the
    discriminator's head on its 4x4 features: `Conv2d(in, 1, 4, 1, 0)` (pytorch/examples) or,
    with a bias, `Linear(in * 16, 1)` on the flattened features; (batch, 4, 4, in) -> (batch,).
    """

    features: int
    project: bool
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = _kernel_4x4(self, x, self.features)
        if self.project:
            y = jnp.einsum("bi,hwio->bhwo", x, kernel)
        else:
            y = jnp.einsum("bhwi,hwio->bo", x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y if self.project else y[:, 0]


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch's semantics, synchronised across `axis_name` when given.

    Normalises with the biased batch variance but, like PyTorch, tracks the unbiased one in
    `var` and counts training batches in `num_batches_tracked`. `momentum` is PyTorch's
    (weight of the new batch), not Flax's decay. Under pmap the mean and variance are those
    of the global batch, so results do not depend on how the batch is split across devices.
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param(
            "scale", lambda key, shape: 1.0 + 0.02 * jax.random.normal(key, shape), (channels,)
        )
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,))
        # Kept so that PyTorch state dicts convert both ways without loss.
        batches_seen = self.variable(
            "batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32)
        )

        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            reduce_axes = tuple(range(x.ndim - 1))
            # Statistics in at least float32, also for bfloat16 activations.
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = x32.mean(reduce_axes)
            var = jnp.square(x32 - mean).mean(reduce_axes)
            count = x.size // channels
            if self.axis_name is not None:
                # The global batch's statistics from every device's (mean, variance) in one
                # collective: with equal shares, the global variance is the mean of the
                # devices' variances plus the variance of their means (exact, and without
                # the cancellation of E[x^2] - E[x]^2).
                stats = lax.all_gather(jnp.stack([mean, var]), self.axis_name)
                means, variances = stats[:, 0], stats[:, 1]
                mean = means.mean(0)
                var = variances.mean(0) + jnp.square(means - mean).mean(0)
                count *= lax.axis_size(self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                unbiased_var = var * (count / max(count - 1, 1))
                running_var.value = (1 - m) * running_var.value + m * unbiased_var
                batches_seen.value = batches_seen.value + 1

        inv = lax.rsqrt(var + self.epsilon) * scale
        return ((x - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)).astype(
            x.dtype
        )


class Generator(nn.Module):
    """z (batch, z_dim) -> images (batch, image_size, image_size, channels) in [-1, 1].

    A 4x4 projection followed by stride-2 up-convolutions, BatchNorm + ReLU between, tanh
    out. Widths halve at each doubling of resolution, ending at `base_features`.
    """

    image_size: int
    channels: int
    base_features: int
    convolutions: str = "matmul"  # a FORMULATIONS entry (see resolve_convolutions)
    axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        norm = lambda: BatchNorm(use_running_average=not train, axis_name=self.axis_name)
        widths = generator_widths(self.base_features, self.image_size)
        x = Dense4x4(widths[0], project=True)(z.astype(self.dtype))
        x = nn.relu(norm()(x))
        for width in widths[1:]:
            x = nn.relu(norm()(UpConv(width, self.convolutions)(x)))
        x = UpConv(self.channels, self.convolutions)(x)
        return jnp.tanh(x.astype(jnp.promote_types(self.dtype, jnp.float32)))


class Discriminator(nn.Module):
    """images (batch, H, W, C) -> logits (batch,).

    Stride-2 4x4 convolutions with LeakyReLU(0.2), BatchNorm on all but the first, down to
    4x4, then a head over the 4x4 features: 'conv' (pytorch/examples, no bias) or 'linear'
    (a linear layer with bias on the flattened features).
    """

    image_size: int
    base_features: int
    head: str = "conv"
    convolutions: str = "matmul"  # a FORMULATIONS entry (see resolve_convolutions)
    axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.head not in ("conv", "linear"):
            raise ValueError(f"head must be 'conv' or 'linear', got {self.head!r}.")
        widths = discriminator_widths(self.base_features, self.image_size)
        x = x.astype(self.dtype)
        for i, width in enumerate(widths):
            x = DownConv(width, self.convolutions)(x)
            if i > 0:
                x = BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
            x = nn.leaky_relu(x, negative_slope=0.2)
        logits = Dense4x4(1, project=False, use_bias=self.head == "linear")(x)
        return logits.astype(jnp.promote_types(self.dtype, jnp.float32))


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def make_models(config, axis_name: str | None = None) -> tuple[Generator, Discriminator]:
    """The generator and discriminator a config describes."""
    dtype = jnp.bfloat16 if config.get("half_precision", False) else jnp.float32
    convolutions = resolve_convolutions(config.get("convolutions", "auto"))
    generator = Generator(
        image_size=config.image_size,
        channels=config.channels,
        base_features=config.g_features,
        convolutions=convolutions,
        axis_name=axis_name,
        dtype=dtype,
    )
    discriminator = Discriminator(
        image_size=config.image_size,
        base_features=config.d_features,
        head=config.d_head,
        convolutions=convolutions,
        axis_name=axis_name,
        dtype=dtype,
    )
    return generator, discriminator
