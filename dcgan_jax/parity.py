"""Forward and one-step agreement with the PyTorch reference on any device, as numbers.

The test suite asserts parity at tiny widths (on the CPU, or with JAX on a GPU); this
module measures it for any model on any device (`python -m dcgan_jax.benchmark --suite`),
and holds the pieces the tests share with it. Both sides start from the same weights
(PyTorch's initialisation, converted), see the same real batch and noise, and report
relative errors instead of asserting, so that a run on a new device shows how close the
two are and under which matrix-unit precision.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import conversion, default_config, models, steps, torch_reference
from dcgan_jax.state import create_state

# What the CPU tests assert in float32 (tests/test_torch_parity.py): forward outputs to
# 1e-5 of their largest magnitude; after one step, gradients (Adam's first moments) to 1e-4
# relative L2 per tensor.
FORWARD_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4
# ... relative to the tensor's norm, or to this fraction of its network's gradient norm if
# that is larger: a gradient that is a sum cancelling by symmetry (BatchNorm scales and
# biases, the head's bias) keeps the rounding of its terms, not of its result. Measured:
# the tiny cifar head's bias gradient (5.5e-4, the difference of two batch means near 0.5)
# came out 8.6e-5 relative from float64 on *both* sides from identical inputs, in opposite
# directions (1.6e-4 apart after a whole step; DCGAN_TEST_SEED=312160014, lax, attempt 2).
CANCELLATION_SCALE = 1e-2
# After a whole step, G's gradients (taken through the D just updated) are comparable only
# when both sides updated D alike: Adam's first update moves each weight by about +-lr
# whatever its gradient's size, so a D gradient within rounding of zero can move the two
# D's apart by up to 2 lr. Measured: D 1.37 lr apart in one weight moved every G gradient
# by 2-3e-4 relative (DCGAN_TEST_SEED=1352368818, matmul), while both sides' half-steps from
# identical inputs were within 7e-7 of float64. Within this many lr, G's move by < 1e-5.
D_UPDATES_AGREE_IN_LR = 0.05


def float64_enabled():
    """A context in which JAX computes in float64 (`jax.enable_x64` in recent JAX,
    `jax.experimental.enable_x64` in the older versions the package supports)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64(True)


def _max_rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def _l2_rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12))


def _network_norm(tensors) -> float:
    """L2 norm of a network's whole gradient, given as its tensors."""
    return float(np.sqrt(sum(np.sum(np.square(t, dtype=np.float64)) for t in tensors)))


def _gradient_error(actual, expected, network_norm: float) -> float:
    """L2 error of one tensor's gradient relative to its norm, or to CANCELLATION_SCALE of
    its network's gradient norm where that is larger (compare with GRADIENT_TOLERANCE)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.linalg.norm(expected), CANCELLATION_SCALE * network_norm, 1e-30)
    return float(np.linalg.norm(actual - expected) / scale)


def numpy_state_dict(net) -> dict[str, np.ndarray]:
    # Copies: on the CPU `.numpy()` shares the tensor's memory, which the reference's
    # in-place updates would change under JAX's feet (JAX may read it asynchronously).
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def torch_named(tree, train_state, layout) -> dict[str, np.ndarray]:
    """`tree` (the network's parameters, or a same-shaped tree such as Adam's first
    moments) under the reference's parameter names."""
    variables = {
        "params": jax.device_get(tree),
        "batch_stats": jax.device_get(train_state.batch_stats),
    }
    return conversion.flax_to_torch(variables, layout)


def _jax_precision(precision: str):
    """JAX's side of `matmul_precision`."""
    return jax.default_matmul_precision(precision if precision == "highest" else None)


@contextlib.contextmanager
def matmul_precision(torch, precision: str):
    """Both frameworks' float32 matrix-unit precision: "highest" (true float32: TF32 off on
    both sides) or "default" (each framework's default: TF32 on Ampere and later GPUs for
    cuDNN convolutions and XLA's dots and convolutions)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if precision == "highest":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        with _jax_precision(precision):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ReLU and LeakyReLU have a kink at 0: an input within float32 rounding of it (~1e-6 of
# its layer's scale) can fall on either side in two implementations, and then its whole
# gradient contribution differs (measured: one such element of 32,768 moved G's gradients
# by 1e-2 relative, where both frameworks otherwise agree with float64 to 5e-7). Float32
# gradients are only comparable when every activation input is farther than this from 0,
# relative to its channel's RMS (a margin over the rounding, which reaches a few 1e-6 of
# it in the last layers of G).
KINK_MARGIN = 1e-5


@functools.partial(jax.jit, static_argnums=0)
def _activation_inputs(apply_fn, variables, inputs):
    """The inputs of every ReLU / LeakyReLU of a training-mode pass: the BatchNorm outputs
    and the discriminator's first convolution output."""
    _, captured = apply_fn(
        variables,
        inputs,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, name: (
            isinstance(module, models.BatchNorm) or module.name == "DownConv_0"
        ),
    )
    return captured["intermediates"]


@jax.jit
def _state_activation_inputs(train_state, inputs):
    """`_activation_inputs` of the network in `train_state`, compiled: the tests screen
    dozens of draws per step, and the pass run op by op took 0.1-0.2 s for a tiny G."""
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    return _activation_inputs(train_state.apply_fn, variables, inputs)


def _all_zero_windows(images) -> np.ndarray:
    """(batch, H/2, W/2) booleans: whether each 4x4 stride-2 window (padding 1) of
    `images` (batch, H, W, C), the receptive field of D's first convolution, is all zero."""
    magnitude = np.pad(np.abs(np.asarray(images, np.float64)).sum(-1), ((0, 0), (1, 1), (1, 1)))
    h, w = (magnitude.shape[1] - 2) // 2, (magnitude.shape[2] - 2) // 2
    total = sum(
        magnitude[:, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(4) for j in range(4)
    )
    return total == 0


def kink_distance(train_state, inputs) -> float:
    """min |x| / rms(x) over the activation inputs x of a training-mode pass of the network
    in `train_state` on `inputs`, each channel against its own RMS (compare with
    KINK_MARGIN)."""
    distances = []
    captured = _state_activation_inputs(train_state, jnp.asarray(inputs))
    for path, value in jax.tree_util.tree_leaves_with_path(captured):
        # Per channel: each channel has its own scale, and its rounding follows it.
        x = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
        rms = np.sqrt(np.mean(x**2, axis=0))
        magnitude = np.abs(x)
        if "DownConv_0" in jax.tree_util.keystr(path):
            # Exact zeros of D's first convolution over an all-zero window of its input are
            # left out: (a corner of a generated image whose pixels are tanh(0) = 0 when
            # G's last ReLUs there are all off) every implementation sums them to exactly
            # 0, so no rounding can move them across the kink. Any other exact 0 (of a
            # BatchNorm output, or of a sum of nonzero terms) is a rounding coincidence, a
            # kink at distance 0: such zeros made the half-step test fail 3 draws in 800
            # (DCGAN_TEST_SEED=95236770, celeba; 1955867642, cifar, under the test
            # workers' one PyTorch thread).
            zero_window = _all_zero_windows(inputs).reshape(-1, 1)  # one per row of x
            magnitude = np.where((x == 0.0) & zero_window, np.inf, magnitude)
        distances.append(np.min(magnitude.min(axis=0) / np.maximum(rms, 1e-30)))
    return float(min(distances))


def _both_sides(config, convolutions: str, seed: int):
    """(config in float32 with `convolutions`, (netG, netD, optG, optD) of the reference on
    CUDA when present, a fresh JAX state to load weights into, real batch (NHWC), noise,
    torch device), all from `seed`."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = default_config.with_overrides(config, convolutions=convolutions, half_precision=False)
    net_g, net_d, _, _ = torch_reference.build(config, seed=seed)
    net_g, net_d = net_g.to(device), net_d.to(device)
    opt_g, opt_d = torch_reference.make_optimizers(config, net_g, net_d)
    generator, discriminator = models.make_models(config)
    fresh = create_state(config, generator, discriminator)
    rng = np.random.default_rng(seed)
    size = config.image_size
    real = rng.uniform(-1, 1, (config.batch_size, size, size, config.channels)).astype(np.float32)
    z = rng.standard_normal((config.batch_size, config.z_dim)).astype(np.float32)
    return config, (net_g, net_d, opt_g, opt_d), fresh, real, z, device


def step_kink_distance(precision, generator, discriminator, updated_discriminator, z, real, fake):
    """`kink_distance` over a training step's passes (G on the noise; D on the real and the
    fake batch; the updated D on the fake batch), computed at the step's `precision` (at
    TF32 the activations would be off by more than the distances being measured)."""
    with _jax_precision(precision):
        return min(
            kink_distance(train_state, inputs)
            for train_state, inputs in (
                (generator, z),
                (discriminator, real),
                (discriminator, fake),
                (updated_discriminator, fake),
            )
        )


# Compiled once per process, not per call: the tests call `measure` for dozens of seeds,
# and every new compiled program (or one loaded from the persistent cache) maps fresh
# code pages; new closures per call added ~1,900 memory mappings a call and crashed the
# process at Linux's 65,530 after ~34 calls.
@jax.jit
def _apply_train(train_state, x):
    """A training-mode pass of the network in `train_state` (its new statistics dropped)."""
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    return train_state.apply_fn(variables, x, train=True, mutable=["batch_stats"])[0]


_train_step = jax.jit(steps.train_step_with_noise)


def measure(config, convolutions: str, precision: str = "highest", seed: int = 0) -> dict:
    """Relative errors of JAX against the reference for `config`'s model, float32.

    JAX runs on its default device and PyTorch on CUDA when present. Returns a dict with
    `forward_g`, `forward_d` (max error over max magnitude, training-mode BatchNorm),
    `metrics` (largest over the step's losses and D outputs), `gradients` (largest L2 error
    over every parameter's Adam first moment after one step, i.e. its gradient, relative to
    its norm or to CANCELLATION_SCALE of its network's, see there; `gradients_d` and
    `gradients_g` the same per network) and `params_in_lr` (largest parameter difference
    after the step in units of the learning rate: Adam's first step moves each weight by
    about +-lr, so a gradient within rounding of zero may move the two sides apart by up to
    2 lr; `d_params_in_lr` for D alone, and `d_updates_agree` when it is within
    D_UPDATES_AGREE_IN_LR: only then are G's gradients comparable), `kink_distance` (the smallest
    relative distance of an activation input from its kink in the step's passes: below
    KINK_MARGIN the gradients may legitimately differ, see there), and whether the CPU
    tests' tolerances hold.
    """
    import torch

    config, (net_g, net_d, opt_g, opt_d), fresh, real, z, device = _both_sides(
        config, convolutions, seed
    )
    state = conversion.load_into_state(
        fresh, numpy_state_dict(net_g), numpy_state_dict(net_d), config
    )
    real_torch = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 3, 1, 2))).to(device)
    z_torch = torch.from_numpy(z).to(device)

    initial = {net: numpy_state_dict(net) for net in (net_g, net_d)}
    with matmul_precision(torch, precision):
        with torch.no_grad():
            fake_ref = net_g(z_torch).cpu().numpy().transpose(0, 2, 3, 1)
            prob_ref = net_d(real_torch).cpu().numpy()
        fake = _apply_train(state.generator, z)
        prob = jax.nn.sigmoid(_apply_train(state.discriminator, real))
        # The reference's training-mode forward passes moved its running statistics (the
        # JAX state is unchanged: apply_train drops the new ones); start the step from the
        # same statistics on both sides.
        for net, state_dict in initial.items():
            net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
        new_state, metrics = _train_step(state, jnp.asarray(real), jnp.asarray(z))
        reference = torch_reference.metrics_to_floats(
            torch_reference.train_step(net_g, net_d, opt_g, opt_d, real_torch, z_torch)
        )

    results = {
        "forward_g": _max_rel(fake, fake_ref),
        "forward_d": _max_rel(prob, prob_ref),
        "metrics": max(_max_rel(metrics[k], reference[k]) for k in reference),
    }
    gradient_errors, param_errors = {"g": [], "d": []}, {"g": [], "d": []}
    for side, net, opt, train_state, layout in (
        ("g", net_g, opt_g, new_state.generator, conversion.generator_layout(config)),
        ("d", net_d, opt_d, new_state.discriminator, conversion.discriminator_layout(config)),
    ):
        moments = torch_named(train_state.opt_state[0].mu, train_state, layout)
        params = torch_named(train_state.params, train_state, layout)
        expected = {
            name: opt.state[param]["exp_avg"].detach().cpu().numpy()
            for name, param in net.named_parameters()
        }
        network_norm = _network_norm(expected.values())
        for name, param in net.named_parameters():
            error = _gradient_error(moments[name], expected[name], network_norm)
            gradient_errors[side].append(error)
            difference = np.abs(params[name] - param.detach().cpu().numpy()).max()
            param_errors[side].append(float(difference) / config.learning_rate)
    results["kink_distance"] = step_kink_distance(
        precision, state.generator, state.discriminator, new_state.discriminator, z, real, fake
    )
    for side in ("g", "d"):
        results[f"gradients_{side}"] = max(gradient_errors[side])
    results["gradients"] = max(results["gradients_g"], results["gradients_d"])
    results["d_params_in_lr"] = max(param_errors["d"])
    results["params_in_lr"] = max(results["d_params_in_lr"], *param_errors["g"])
    results["d_updates_agree"] = results["d_params_in_lr"] <= D_UPDATES_AGREE_IN_LR
    results["forward_holds_1e-5"] = max(results["forward_g"], results["forward_d"]) <= (
        FORWARD_TOLERANCE
    )
    results["gradients_hold_1e-4"] = results["gradients"] <= GRADIENT_TOLERANCE
    return results


def float64_gradient_errors(
    config, seed: int = 0, sides=tuple((c, "highest") for c in models.FORMULATIONS)
) -> dict[str, dict[str, float]]:
    """Per-tensor gradient errors of each side against the float64 truth.

    The truth is this project's step in float64 on the host CPU (formulation-independent to
    ~1e-15). The sides are JAX on its default device in float32, one per (convolutions,
    precision), and the reference on CUDA (or CPU) with TF32 off. Each entry maps a
    parameter's PyTorch name to the relative L2 error of its gradient (Adam's first moment
    after one step), so a side that loses precision in one layer shows where.
    """
    import torch

    config = default_config.with_overrides(config, convolutions="matmul", half_precision=False)
    net_g, net_d, _, _ = torch_reference.build(config, seed=seed)
    sd_g, sd_d = numpy_state_dict(net_g), numpy_state_dict(net_d)
    rng = np.random.default_rng(seed)
    size = config.image_size
    real = rng.uniform(-1, 1, (config.batch_size, size, size, config.channels))
    z = rng.standard_normal((config.batch_size, config.z_dim))
    layouts = (conversion.generator_layout(config), conversion.discriminator_layout(config))

    def jax_moments(dtype, convolutions):
        cfg = default_config.with_overrides(config, convolutions=convolutions)
        state = conversion.load_into_state(
            state_template(cfg, dtype), _as_dtype(sd_g, dtype), _as_dtype(sd_d, dtype), cfg
        )
        new_state, _ = jax.jit(steps.train_step_with_noise)(
            state, jnp.asarray(real, dtype), jnp.asarray(z, dtype)
        )
        moments = {}
        for prefix, train_state, layout in zip(
            "GD", (new_state.generator, new_state.discriminator), layouts, strict=True
        ):
            converted = torch_named(train_state.opt_state[0].mu, train_state, layout)
            moments.update(
                {f"{prefix}.{k}": np.asarray(v, np.float64) for k, v in converted.items()}
            )
        return moments

    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        truth = jax_moments(jnp.float64, "matmul")
    names = [f"G.{n}" for n, _ in net_g.named_parameters()]
    names += [f"D.{n}" for n, _ in net_d.named_parameters()]
    errors = {}
    for convolutions, precision in sides:
        with matmul_precision(torch, precision):
            moments = jax_moments(jnp.float32, convolutions)
        errors[f"jax {convolutions} {precision}"] = {
            name: _l2_rel(moments[name], truth[name]) for name in names
        }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net_g, net_d = net_g.to(device), net_d.to(device)
    opt_g, opt_d = torch_reference.make_optimizers(config, net_g, net_d)
    to_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    with matmul_precision(torch, "highest"):
        torch_reference.train_step(
            net_g, net_d, opt_g, opt_d, to_torch(real.transpose(0, 3, 1, 2)), to_torch(z)
        )
    torch_errors = {}
    for prefix, net, opt in (("G", net_g, opt_g), ("D", net_d, opt_d)):
        for name, param in net.named_parameters():
            moment = opt.state[param]["exp_avg"].detach().cpu().numpy()
            torch_errors[f"{prefix}.{name}"] = _l2_rel(moment, truth[f"{prefix}.{name}"])
    errors["torch highest"] = torch_errors
    return errors


# Each half-step from identical inputs. A whole float32 step cannot be compared tensor by
# tensor with a bound that follows from the arithmetic: G's gradients are taken through
# the D that the step has just updated, and Adam's first update moves every weight by
# about +-lr whatever its gradient's size, so a D gradient within rounding of zero can
# move the two sides' D apart by 2 lr and G's gradients by far more than rounding. So D's
# half-step starts from the reference's D, real batch and fake batch, and G's from the
# reference's G and the reference's *updated* D; each side's gradients are then compared
# with the same half-step in float64.
d_half_step = jax.jit(steps.d_step)


@jax.jit
def g_half_step(g_state, d_state, z):
    """G's half-step (`steps.g_step` after `steps.generate`) through a given D."""
    fake, pullback, g_batch_stats = steps.generate(g_state, z)
    return steps.g_step(g_state, g_batch_stats, d_state, fake, pullback)


def recording_reference(net_g, net_d, opt_g, opt_d) -> dict:
    """Makes the reference's step leave its intermediate results in the returned dict:
    "fake" (the fake batch, NHWC), "d_grads" and "g_grads" (each network's gradients as
    its optimiser saw them) and "d_after" / "g_after" (each state dict right after its own
    update; D's before G's step runs it a third time). On any device; copies on the host."""
    records = {}
    net_g.register_forward_hook(
        lambda module, inputs, out: records.__setitem__(
            "fake", out.detach().cpu().numpy().transpose(0, 2, 3, 1).copy()
        )
    )
    for name, opt, net in (("g", opt_g, net_g), ("d", opt_d, net_d)):
        original = opt.step

        def step(*args, _name=name, _net=net, _original=original, **kwargs):
            records[f"{_name}_grads"] = {
                k: p.grad.detach().cpu().numpy().copy() for k, p in _net.named_parameters()
            }
            out = _original(*args, **kwargs)
            records[f"{_name}_after"] = numpy_state_dict(_net)
            return out

        opt.step = step
    return records


def first_update_gradients(train_state, layout, beta1: float) -> dict[str, np.ndarray]:
    """The gradient of a state's first Adam update, by the reference's names: with fresh
    moments Adam's first moment is (1 - beta1) x gradient."""
    moments = torch_named(train_state.opt_state[0].mu, train_state, layout)
    return {k: v / (1 - beta1) for k, v in moments.items()}


def state_template(config, dtype=jnp.float64):
    """A fresh GAN state for `config`'s models computing in `dtype`, its floating leaves in
    `dtype` (load weights with conversion.load_into_state); for float64 call it inside
    `float64_enabled()`."""
    g, d = models.make_models(config)
    state = create_state(config, g.clone(dtype=dtype), d.clone(dtype=dtype))
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
    )


def _as_dtype(state_dict: dict, dtype) -> dict:
    """A state dict with its floating arrays in `dtype` (counters stay integers)."""
    return {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in state_dict.items()}


def exact_half_step_gradients(fresh64, config, before_g, before_d, records, real, z):
    """D's and G's gradients of the two half-steps from the inputs that `records` (from
    `recording_reference`) and the state dicts before the step give, in float64 on the
    host CPU (which agrees with PyTorch's float64 to 1e-7, tests/test_torch_parity.py)."""
    as64 = lambda state_dict: _as_dtype(state_dict, np.float64)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        state = conversion.load_into_state(fresh64, as64(before_g), as64(before_d), config)
        updated = conversion.load_into_state(
            fresh64, as64(before_g), as64(records["d_after"]), config
        )
        d_state, _ = d_half_step(
            state.discriminator,
            np.asarray(real, np.float64),
            records["fake"].astype(np.float64),
        )
        g_state, _, _ = g_half_step(
            state.generator, updated.discriminator, np.asarray(z, np.float64)
        )
        return (
            first_update_gradients(d_state, conversion.discriminator_layout(config), config.beta1),
            first_update_gradients(g_state, conversion.generator_layout(config), config.beta1),
        )


class GradientError(NamedTuple):
    """One tensor's float32 gradient against float64: L2 errors and the norm they compare
    with."""

    ours: float  # JAX's L2 error
    reference: float  # the reference's L2 error
    bound: float  # what `ours` may reach (gradient_error_bounds)
    norm: float  # L2 norm of the float64 gradient


def gradient_error_bounds(grads, ref_grads, exact_grads) -> dict[str, GradientError]:
    """For each tensor, both sides' L2 errors against the float64 gradients of the same
    half-step and the bound on ours.

    The bound: GRADIENT_TOLERANCE (1e-4) of the tensor's norm (rounding of sums of a few
    thousand terms) or of CANCELLATION_SCALE of the whole network's gradient norm (1e-6 of
    it), or 10x the reference's own float32 error: the last two for sums that cancel
    (BatchNorm scales and biases, the head's bias: their gradients nearly cancel by
    symmetry), whose rounding follows the size of the terms, not of the result (PyTorch's
    CPU BatchNorm accumulates in float64, so its own error there can be far below
    float32's)."""
    network_norm = _network_norm(exact_grads[k] for k in ref_grads)
    errors = {}
    for key, value in ref_grads.items():
        exact = np.asarray(exact_grads[key], np.float64)
        norm = np.linalg.norm(exact)
        our_error = np.linalg.norm(np.asarray(grads[key], np.float64) - exact)
        their_error = np.linalg.norm(np.asarray(value, np.float64) - exact)
        scale = max(norm, CANCELLATION_SCALE * network_norm)
        bound = max(GRADIENT_TOLERANCE * scale, 10 * their_error)
        errors[key] = GradientError(float(our_error), float(their_error), float(bound), float(norm))
    return errors


def half_step_errors(config, convolutions: str, precision: str = "highest", seed: int = 0) -> dict:
    """Each half-step of one float32 training step from identical inputs, JAX on its
    default device and the reference on CUDA (or CPU), both against float64.

    Returns `jax` and `torch`: per-tensor relative L2 errors of the gradients ("D.<name>",
    "G.<name>"); `worst_jax`, `worst_torch` (their largest); `holds`: whether every JAX
    error is within `gradient_error_bounds` (what the CPU tests assert) and `over_bound`
    (the tensors that are not); `kink_distance` of the passes (see KINK_MARGIN: below it a
    near-zero activation input may fall on either side of its kink, and a gradient may
    then differ legitimately).
    """
    import torch

    config, (net_g, net_d, opt_g, opt_d), fresh, real, z, device = _both_sides(
        config, convolutions, seed
    )
    before_g, before_d = numpy_state_dict(net_g), numpy_state_dict(net_d)
    state = conversion.load_into_state(fresh, before_g, before_d, config)
    records = recording_reference(net_g, net_d, opt_g, opt_d)
    with matmul_precision(torch, precision):
        torch_reference.train_step(
            net_g,
            net_d,
            opt_g,
            opt_d,
            torch.from_numpy(np.ascontiguousarray(real.transpose(0, 3, 1, 2))).to(device),
            torch.from_numpy(z).to(device),
        )
        updated = conversion.load_into_state(fresh, before_g, records["d_after"], config)
        d_state, _ = d_half_step(state.discriminator, real, records["fake"])
        g_state, _, _ = g_half_step(state.generator, updated.discriminator, z)
    # The truth with the matmul formulation whatever the side's: the same function, and
    # XLA:CPU's native float64 convolutions are slow at full size.
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        fresh64 = state_template(default_config.with_overrides(config, convolutions="matmul"))
    exact_d, exact_g = exact_half_step_gradients(
        fresh64, config, before_g, before_d, records, real, z
    )
    results = {"jax": {}, "torch": {}, "over_bound": []}
    for prefix, ours, theirs, exact in (
        (
            "D",
            first_update_gradients(d_state, conversion.discriminator_layout(config), config.beta1),
            records["d_grads"],
            exact_d,
        ),
        (
            "G",
            first_update_gradients(g_state, conversion.generator_layout(config), config.beta1),
            records["g_grads"],
            exact_g,
        ),
    ):
        for key, error in gradient_error_bounds(ours, theirs, exact).items():
            norm = max(error.norm, 1e-30)
            results["jax"][f"{prefix}.{key}"] = error.ours / norm
            results["torch"][f"{prefix}.{key}"] = error.reference / norm
            if error.ours > error.bound:
                results["over_bound"].append(f"{prefix}.{key}")
    results["worst_jax"] = max(results["jax"].values())
    results["worst_torch"] = max(results["torch"].values())
    results["holds"] = not results["over_bound"]
    results["kink_distance"] = step_kink_distance(
        precision,
        state.generator,
        state.discriminator,
        updated.discriminator,
        z,
        real,
        records["fake"],
    )
    return results
