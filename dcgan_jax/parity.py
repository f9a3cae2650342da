"""Forward and one-step agreement with the PyTorch reference on any device, as numbers.

The test suite asserts parity on the CPU; this module measures it where the tests cannot
run (a GPU, in `python -m dcgan_jax.benchmark --suite`). Both sides start from the same
weights (PyTorch's initialisation, converted), see the same real batch and noise, and
report relative errors instead of asserting, so that a run on a new device shows how
close the two are and under which matrix-unit precision.
"""

from __future__ import annotations

import contextlib
import functools

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


def _numpy_state_dict(net) -> dict[str, np.ndarray]:
    # Copies: on the CPU `.numpy()` shares the tensor's memory, which the reference's
    # in-place updates would change under JAX's feet (JAX may read it asynchronously).
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def _torch_named(tree, train_state, layout) -> dict[str, np.ndarray]:
    """`tree` (the network's parameters, or a same-shaped tree such as Adam's first
    moments) under the reference's parameter names."""
    variables = {
        "params": jax.device_get(tree),
        "batch_stats": jax.device_get(train_state.batch_stats),
    }
    return conversion.flax_to_torch(variables, layout)


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
        with jax.default_matmul_precision(precision if precision == "highest" else None):
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


def kink_distance(train_state, inputs) -> float:
    """min |x| / rms(x) over the activation inputs x of a training-mode pass of the network
    in `train_state` on `inputs`, each channel against its own RMS (compare with
    KINK_MARGIN)."""
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    distances = []
    for value in jax.tree_util.tree_leaves(
        _activation_inputs(train_state.apply_fn, variables, jnp.asarray(inputs))
    ):
        # Per channel: each channel has its own scale, and its rounding follows it.
        x = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
        rms = np.sqrt(np.mean(x**2, axis=0))
        # Exact zeros are left out: they come from all-zero inputs (a corner of D's first
        # convolution over a generated image whose corner pixels are tanh(0) = 0 when G's
        # last ReLUs there are all off), which every implementation sums to exactly 0, so
        # no rounding can move them across the kink.
        magnitude = np.where(x == 0.0, np.inf, np.abs(x))
        distances.append(np.min(magnitude.min(axis=0) / np.maximum(rms, 1e-30)))
    return float(min(distances))


def measure(config, convolutions: str, precision: str = "highest", seed: int = 0) -> dict:
    """Relative errors of JAX against the reference for `config`'s model, float32.

    JAX runs on its default device and PyTorch on CUDA when present. Returns a dict with
    `forward_g`, `forward_d` (max error over max magnitude, training-mode BatchNorm),
    `metrics` (largest over the step's losses and D outputs), `gradients` (largest relative
    L2 over every parameter's Adam first moment after one step, i.e. its gradient) and
    `params_in_lr` (largest parameter difference after the step in units of the learning
    rate: Adam's first step moves each weight by about +-lr, so a gradient within rounding
    of zero may move the two sides apart by up to 2 lr), `kink_distance` (the smallest
    relative distance of an activation input from its kink in the step's passes: below
    KINK_MARGIN the gradients may legitimately differ, see there), and whether the CPU
    tests' tolerances hold.
    """
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = default_config.with_overrides(config, convolutions=convolutions, half_precision=False)
    net_g, net_d, _, _ = torch_reference.build(config, seed=seed)
    net_g, net_d = net_g.to(device), net_d.to(device)
    opt_g, opt_d = torch_reference.make_optimizers(config, net_g, net_d)
    generator, discriminator = models.make_models(config)
    state = conversion.load_into_state(
        create_state(config, generator, discriminator),
        _numpy_state_dict(net_g),
        _numpy_state_dict(net_d),
        config,
    )
    rng = np.random.default_rng(seed)
    size = config.image_size
    real = rng.uniform(-1, 1, (config.batch_size, size, size, config.channels)).astype(np.float32)
    z = rng.standard_normal((config.batch_size, config.z_dim)).astype(np.float32)
    real_torch = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 3, 1, 2))).to(device)
    z_torch = torch.from_numpy(z).to(device)

    def apply_train(train_state, x):
        variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
        return train_state.apply_fn(variables, x, train=True, mutable=["batch_stats"])[0]

    initial = {net: _numpy_state_dict(net) for net in (net_g, net_d)}
    with matmul_precision(torch, precision):
        with torch.no_grad():
            fake_ref = net_g(z_torch).cpu().numpy().transpose(0, 2, 3, 1)
            prob_ref = net_d(real_torch).cpu().numpy()
        fake = jax.jit(apply_train)(state.generator, z)
        prob = jax.nn.sigmoid(jax.jit(apply_train)(state.discriminator, real))
        # The reference's training-mode forward passes moved its running statistics (the
        # JAX state is unchanged: apply_train drops the new ones); start the step from the
        # same statistics on both sides.
        for net, state_dict in initial.items():
            net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
        new_state, metrics = jax.jit(steps.train_step_with_noise)(
            state, jnp.asarray(real), jnp.asarray(z)
        )
        reference = torch_reference.metrics_to_floats(
            torch_reference.train_step(net_g, net_d, opt_g, opt_d, real_torch, z_torch)
        )

    results = {
        "forward_g": _max_rel(fake, fake_ref),
        "forward_d": _max_rel(prob, prob_ref),
        "metrics": max(_max_rel(metrics[k], reference[k]) for k in reference),
    }
    gradient_errors, param_errors = [], []
    for net, opt, train_state, layout in (
        (net_g, opt_g, new_state.generator, conversion.generator_layout(config)),
        (net_d, opt_d, new_state.discriminator, conversion.discriminator_layout(config)),
    ):
        moments = _torch_named(train_state.opt_state[0].mu, train_state, layout)
        params = _torch_named(train_state.params, train_state, layout)
        for name, param in net.named_parameters():
            expected = opt.state[param]["exp_avg"].detach().cpu().numpy()
            gradient_errors.append(_l2_rel(moments[name], expected))
            difference = np.abs(params[name] - param.detach().cpu().numpy()).max()
            param_errors.append(float(difference) / config.learning_rate)
    results["kink_distance"] = min(
        kink_distance(*p)
        for p in (
            (state.generator, z),
            (state.discriminator, real),
            (state.discriminator, fake),
            (new_state.discriminator, fake),
        )
    )
    results["gradients"] = max(gradient_errors)
    results["params_in_lr"] = max(param_errors)
    results["forward_holds_1e-5"] = max(results["forward_g"], results["forward_d"]) <= (
        FORWARD_TOLERANCE
    )
    results["gradients_hold_1e-4"] = results["gradients"] <= GRADIENT_TOLERANCE
    return results


def float64_gradient_errors(
    config, seed: int = 0, sides=(("matmul", "highest"), ("lax", "highest"))
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
    sd_g, sd_d = _numpy_state_dict(net_g), _numpy_state_dict(net_d)
    rng = np.random.default_rng(seed)
    size = config.image_size
    real = rng.uniform(-1, 1, (config.batch_size, size, size, config.channels))
    z = rng.standard_normal((config.batch_size, config.z_dim))
    layouts = (conversion.generator_layout(config), conversion.discriminator_layout(config))

    def jax_moments(dtype, convolutions):
        cfg = default_config.with_overrides(config, convolutions=convolutions)
        g, d = models.make_models(cfg)
        g, d = g.clone(dtype=dtype), d.clone(dtype=dtype)
        cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        state = jax.tree_util.tree_map(cast, create_state(cfg, g, d))
        as_dtype = lambda sd: {
            k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in sd.items()
        }
        state = conversion.load_into_state(state, as_dtype(sd_g), as_dtype(sd_d), cfg)
        new_state, _ = jax.jit(steps.train_step_with_noise)(
            state, jnp.asarray(real, dtype), jnp.asarray(z, dtype)
        )
        moments = {}
        for prefix, train_state, layout in zip(
            "GD", (new_state.generator, new_state.discriminator), layouts, strict=True
        ):
            converted = _torch_named(train_state.opt_state[0].mu, train_state, layout)
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
