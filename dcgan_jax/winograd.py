"""DCGAN's 4x4 stride-2 convolutions by Winograd's minimal filtering: 9/16 of the multiplies.

Both convolutions split, per spatial dimension, into two 2-tap filters, and F(2, 2) computes
two outputs of a 2-tap filter (g0, g1) over inputs (d0, d1, d2) with three products instead
of four: m0 = (d0 - d1) g0, m1 = d1 (g0 + g1), m2 = (d2 - d1) g1; y0 = m0 + m1, y1 = m1 + m2.
In two dimensions that is 9 products for 2x2 outputs where the direct sum takes 16; with
channels each product is a matrix product over the channels, so a layer becomes 9 or 25
matrix products of 9/16 of the multiply-adds plus the transforms (only additions, with
coefficients of +-1: about twice the float32 rounding of the direct sum, README "Speed").

- `conv_transpose`, PyTorch's ConvTranspose2d(4, stride=2, padding=1): output row 2m takes
  taps (3, 1) of inputs (m - 1, m) and row 2m + 1 taps (2, 0) of inputs (m, m + 1). A tile of
  4 output rows 4k..4k+3 takes the even rows' filter over inputs 2k-1..2k+1 and the odd rows'
  over 2k..2k+2; of their six transformed inputs per dimension two are the same up to sign
  (x[2k+1] - x[2k]), so a layer is 25 products, of 1, 2 or 4 kernel blocks each.
- `strided_conv`, PyTorch's Conv2d(4, stride=2, padding=1): out[m] = sum over phases r of
  the 2-tap filter (w[r], w[r + 2]) over the padded input's r-th polyphase component; the
  four (row, column) phases of a transform point share one product over 4C channels, so a
  layer is 9 products of (B*H*W/16, 4C) @ (4C, O).

The transforms' gradients are written out (`_with_transpose`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _shifted(a: jax.Array, axis: int, amount: int) -> jax.Array:
    """`a[k - amount]` along `axis`, zero where that falls outside."""
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (amount, -amount, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _signed_sum(terms: list[tuple[jax.Array, int]]) -> jax.Array:
    total = None
    for term, sign in terms:
        term = term if sign > 0 else -term
        total = term if total is None else total + term
    return total


def _with_transpose(transpose, nondiff_argnums=()):
    """Decorates a linear map so that its gradient is `transpose(*nondiff_args, cotangent)`.

    Each transform here has one: as autodiff transposes their slices, XLA:CPU computed the
    kernel gradient from a pad per use (15-19 ms for cifar G's 4x4 layer, against the 2 ms
    of the additions) and compiled a pad per term of the input gradient."""

    def decorate(linear):
        function = jax.custom_vjp(linear, nondiff_argnums=nondiff_argnums)
        function.defvjp(
            lambda *args: (linear(*args), None),
            lambda *args: (transpose(*args[:-2], args[-1]),),
        )
        return function

    return decorate


def _kernel_from_taps(tap) -> jax.Array:
    """The (4, 4, in, out) kernel (or its gradient) whose tap (h, w) is `tap(h, w)`."""
    return jnp.stack([jnp.stack([tap(h, w) for w in range(4)]) for h in range(4)])


def _polyphase(x: jax.Array, axis: int, factor: int) -> list[jax.Array]:
    """The `factor` polyphase components of `x` along `axis`: [x[factor*k + i] for i]."""
    shape = x.shape
    folded = x.reshape((*shape[:axis], shape[axis] // factor, factor, *shape[axis + 1 :]))
    return [lax.index_in_dim(folded, i, axis + 1, keepdims=False) for i in range(factor)]


def _interleaved(parts: list[jax.Array], axis: int) -> jax.Array:
    """The inverse of `_polyphase`: parts[i][k] at index len(parts) * k + i along `axis`."""
    stacked = jnp.stack(parts, axis + 1)
    shape = parts[0].shape
    return stacked.reshape((*shape[:axis], shape[axis] * len(parts), *shape[axis + 1 :]))


# --- ConvTranspose2d ----------------------------------------------------------------------
# Per dimension, an output tile has five distinct transformed inputs ("points"): the even
# rows' filter uses points 0-2, the odd rows' points 2-4 (point 2 negated for the odd rows,
# which the kernel transform carries). The kernel transform per dimension has a row per
# (point, use), a signed sum of taps, ordered by the use: row r serves phase r // 3 (even,
# odd) at F(2, 2) index r % 3.
_UP_KERNEL_ROWS = (
    (0, ((3, 1),)),
    (1, ((3, 1), (1, 1))),
    (2, ((1, 1),)),
    (2, ((2, -1),)),
    (3, ((2, 1), (0, 1))),
    (4, ((0, 1),)),
)
_UP_ROWS_OF_POINT = [
    [r for r, (point, _) in enumerate(_UP_KERNEL_ROWS) if point == p] for p in range(5)
]
# The (phase, F(2, 2) index) of each use of each point, in its kernel block's column order.
_UP_POINT_USES = [[divmod(r, 3) for r in rows] for rows in _UP_ROWS_OF_POINT]


def _up_input_transform_transpose(axis, grads):
    a, b, c, d, e = grads
    even = b - a - c + _shifted(e, axis, 1)
    odd = _shifted(a, axis, -1) + c + d - e
    return _interleaved([even, odd], axis)


@_with_transpose(_up_input_transform_transpose, nondiff_argnums=(1,))
def _up_input_transform(x: jax.Array, axis: int) -> list[jax.Array]:
    """The five transformed inputs per tile along `axis` (which halves)."""
    even, odd = _polyphase(x, axis, 2)
    # Even rows' window (x[2k-1], x[2k], x[2k+1]); odd rows' (x[2k], x[2k+1], x[2k+2]).
    return [
        _shifted(odd, axis, 1) - even,
        even,
        odd - even,
        odd,
        _shifted(even, axis, -1) - odd,
    ]


def _up_kernel_transform_transpose(block_grads):
    c_in, c_out = block_grads[0].shape  # point (0, 0) serves one phase pair
    piece = {}
    for p in range(5):
        rows_h = _UP_ROWS_OF_POINT[p]
        for q in range(5):
            rows_w = _UP_ROWS_OF_POINT[q]
            grad = block_grads[5 * p + q].reshape(c_in, len(rows_h), len(rows_w), c_out)
            for i, row_h in enumerate(rows_h):
                for j, row_w in enumerate(rows_w):
                    piece[row_h, row_w] = grad[:, i, j]
    rows_of_tap = [
        [(r, s) for r, (_, taps) in enumerate(_UP_KERNEL_ROWS) for t, s in taps if t == tap]
        for tap in range(4)
    ]
    tap = lambda h, w: _signed_sum(
        [(piece[r_h, r_w], s_h * s_w) for r_h, s_h in rows_of_tap[h] for r_w, s_w in rows_of_tap[w]]
    )
    return _kernel_from_taps(tap)


@_with_transpose(_up_kernel_transform_transpose)
def _up_kernel_transform(kernel: jax.Array) -> tuple[jax.Array, ...]:
    """The 25 (C, uses * O) kernel blocks of `conv_transpose`, point (p, q) at 5p + q."""
    by_row = [_signed_sum([(kernel[t], s) for t, s in taps]) for _, taps in _UP_KERNEL_ROWS]
    blocks = []
    for p in range(5):
        for q in range(5):
            pieces = [
                _signed_sum([(by_row[row_h][t], s) for t, s in _UP_KERNEL_ROWS[row_w][1]])
                for row_h in _UP_ROWS_OF_POINT[p]
                for row_w in _UP_ROWS_OF_POINT[q]
            ]
            blocks.append(jnp.concatenate(pieces, axis=1))
    return tuple(blocks)


def conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """ConvTranspose2d(4, stride=2, padding=1) of NHWC `x` (even height and width) with the
    (4, 4, in, out) kernel, as 25 matrix products of 9/16 of the multiplies."""
    batch, height, width, c_in = x.shape
    c_out = kernel.shape[-1]
    if height % 2 or width % 2:
        raise ValueError(f"Winograd's transposed convolution needs an even size, got {x.shape}")
    blocks = _up_kernel_transform(kernel)
    # products[phase_h, phase_w, p, q]: (B * H/2 * W/2, O), F(2, 2) index p, q of each phase.
    products = {}
    by_rows = _up_input_transform(x, 1)
    for p in range(5):
        transformed = _up_input_transform(by_rows[p], 2)
        for q in range(5):
            uses = [(ph, i, pw, j) for ph, i in _UP_POINT_USES[p] for pw, j in _UP_POINT_USES[q]]
            result = transformed[q].reshape(-1, c_in) @ blocks[5 * p + q]
            for n, (ph, i, pw, j) in enumerate(uses):
                products[ph, pw, i, j] = result[:, n * c_out : (n + 1) * c_out]
    # Output transform, columns then rows: sub-position 2 * pos + phase of each 4-wide tile.
    by_cols = {}
    for ph in range(2):
        for i in range(3):
            cols = [
                products[ph, pw, i, pos] + products[ph, pw, i, pos + 1]
                for pos in range(2)
                for pw in range(2)
            ]
            by_cols[ph, i] = jnp.stack(cols, axis=1).reshape(batch, height // 2, 2 * width, c_out)
    rows = [by_cols[ph, pos] + by_cols[ph, pos + 1] for pos in range(2) for ph in range(2)]
    return jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, c_out)


# --- Conv2d -------------------------------------------------------------------------------
# Per dimension and phase r, the filter (g0, g1) = (w[r], w[r + 2]) and the F(2, 2) kernel
# transform (g0, g0 + g1, g1): which of g0, g1 each point sums.
_DOWN_POINT_TAPS = ((0,), (0, 1), (1,))


def _down_input_transform_transpose(axis, grads):
    (a0, b0, c0), (a1, b1, c1) = grads
    x0 = a1 + _shifted(c1, axis, 1)
    x1 = b0 - a0 - c0
    x2 = b1 - a1 - c1
    x3 = _shifted(a0, axis, -1) + c0
    return _interleaved([x0, x1, x2, x3], axis)


@_with_transpose(_down_input_transform_transpose, nondiff_argnums=(1,))
def _down_input_transform(x: jax.Array, axis: int) -> list[list[jax.Array]]:
    """[phase][point]: the padded input's phase r is x[2j + r - 1]; a 2-output tile k reads
    its samples 2k..2k+2, i.e. x[4k + r - 1 .. 4k + r + 3] in steps of 2. The axis shrinks
    4x."""
    x0, x1, x2, x3 = _polyphase(x, axis, 4)
    return [
        [_shifted(x3, axis, 1) - x1, x1, x3 - x1],
        [x0 - x2, x2, _shifted(x0, axis, -1) - x2],
    ]


def _down_kernel_transform_transpose(block_grads):
    four_c_in, c_out = block_grads[0].shape
    grads = [g.reshape(2, 2, four_c_in // 4, c_out) for g in block_grads]
    points_of = ((0, 1), (1, 2))  # the points that sum g0, g1
    tap = lambda h, w: _signed_sum(
        [(grads[3 * p + q][h % 2, w % 2], 1) for p in points_of[h // 2] for q in points_of[w // 2]]
    )
    return _kernel_from_taps(tap)


@_with_transpose(_down_kernel_transform_transpose)
def _down_kernel_transform(kernel: jax.Array) -> tuple[jax.Array, ...]:
    """The 9 (4C, O) kernel blocks of `strided_conv`, point (p, q) at 3p + q, rows ordered
    (phase_h, phase_w, channel)."""
    blocks = []
    for p in range(3):
        for q in range(3):
            phases = [
                _signed_sum(
                    [
                        (kernel[r_h + 2 * g_h, r_w + 2 * g_w], 1)
                        for g_h in _DOWN_POINT_TAPS[p]
                        for g_w in _DOWN_POINT_TAPS[q]
                    ]
                )
                for r_h in range(2)
                for r_w in range(2)
            ]
            blocks.append(jnp.stack(phases).reshape(-1, kernel.shape[-1]))
    return tuple(blocks)


def strided_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Conv2d(4, stride=2, padding=1) of NHWC `x` (height and width multiples of 4) with the
    (4, 4, in, out) kernel, as 9 matrix products of 9/16 of the multiplies."""
    batch, height, width, c_in = x.shape
    c_out = kernel.shape[-1]
    if height % 4 or width % 4:
        raise ValueError(f"Winograd's strided convolution needs sizes divisible by 4: {x.shape}")
    blocks = _down_kernel_transform(kernel)
    by_rows = _down_input_transform(x, 1)
    transformed = [[_down_input_transform(by_rows[r][p], 2) for p in range(3)] for r in range(2)]
    products = {}
    for p in range(3):
        for q in range(3):
            phases = [transformed[r_h][p][r_w][q] for r_h in range(2) for r_w in range(2)]
            stacked = jnp.stack(phases, axis=3).reshape(-1, 4 * c_in)
            products[p, q] = stacked @ blocks[3 * p + q]
    rows = []
    for pos_h in range(2):
        cols = [
            _signed_sum(
                [(products[p, q], 1) for p in (pos_h, pos_h + 1) for q in (pos_w, pos_w + 1)]
            )
            for pos_w in range(2)
        ]
        rows.append(jnp.stack(cols, axis=1).reshape(batch, height // 4, width // 2, c_out))
    return jnp.stack(rows, axis=2).reshape(batch, height // 2, width // 2, c_out)
