"""JAX vs the PyTorch reference: same weights and inputs give the same numbers (CPU, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcgan_jax import conversion, models, steps, torch_reference  # noqa: E402
from dcgan_jax.state import create_state  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

# Small versions of the two reference architectures.
ARCHITECTURES = {
    "cifar": dict(image_size=32, channels=3, d_head="linear", g_features=8, d_features=8),
    "celeba": dict(image_size=64, channels=3, d_head="conv", g_features=4, d_features=4),
}


def assert_close(actual, expected, rel, name=""):
    """max |actual - expected| <= rel * max |expected| (relative to the tensor's scale)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-12)
    error = np.abs(actual - expected).max()
    assert error <= rel * scale, f"{name}: max abs error {error:.3g} > {rel} * {scale:.3g}"


def assert_close_l2(actual, expected, rel, name=""):
    """||actual - expected|| <= rel * ||expected||, over the whole tensor."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    error = np.linalg.norm(actual - expected)
    scale = max(np.linalg.norm(expected), 1e-12)
    assert error <= rel * scale, f"{name}: relative L2 error {error / scale:.3g} > {rel}"


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _state_dict_numpy(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _randomize_running_stats(module, generator):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.num_batches_tracked.fill_(int(torch.randint(0, 100, (1,), generator=generator)))


def _setup(arch, seed, dtype=np.float32):
    config = tiny_config(**ARCHITECTURES[arch], z_dim=16, batch_size=8)
    net_g, net_d, *_ = torch_reference.build(config, seed=seed)
    jax_dtype = jnp.dtype(dtype)
    if dtype == np.float64:
        net_g, net_d = net_g.double(), net_d.double()
    opt_g, opt_d = torch_reference.make_optimizers(config, net_g, net_d)
    g, d = models.make_models(config)
    g, d = g.clone(dtype=jax_dtype), d.clone(dtype=jax_dtype)
    state = create_state(config, g, d)
    state = jax.tree_util.tree_map(
        lambda x: x.astype(jax_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
    )
    state = conversion.load_into_state(
        state, _state_dict_numpy(net_g), _state_dict_numpy(net_d), config
    )
    rng = np.random.default_rng(seed)
    size, channels = config.image_size, config.channels
    real = rng.uniform(-1, 1, (config.batch_size, size, size, channels)).astype(dtype)
    z = rng.standard_normal((config.batch_size, config.z_dim)).astype(dtype)
    return config, state, (net_g, net_d, opt_g, opt_d), real, z


def _apply(train_state, x, train):
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    if train:
        return train_state.apply_fn(variables, x, train=True, mutable=["batch_stats"])[0]
    return train_state.apply_fn(variables, x, train=False)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("train", [True, False])
def test_forward_passes_match(arch, train, seed):
    config, state, (net_g, net_d, *_), real, z = _setup(arch, seed)
    if not train:
        gen = torch.Generator().manual_seed(seed)
        _randomize_running_stats(net_g, gen)
        _randomize_running_stats(net_d, gen)
        state = conversion.load_into_state(
            state, _state_dict_numpy(net_g), _state_dict_numpy(net_d), config
        )
    net_g.train(train)
    net_d.train(train)
    with torch.no_grad():
        fake_torch = net_g(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
        prob_torch = net_d(_nchw(real)).numpy()
    fake_jax = jax.jit(_apply, static_argnums=2)(state.generator, z, train)
    logits_jax = jax.jit(_apply, static_argnums=2)(state.discriminator, real, train)
    assert_close(fake_jax, fake_torch, 1e-5)
    assert_close(jax.nn.sigmoid(logits_jax), prob_torch, 1e-5)


def _compare_states(
    state, net_g, net_d, config, rel, metric=assert_close, param_atol=None, noisy_atol=None
):
    """Every tensor of both networks against the reference, with `metric` at `rel`.

    With `param_atol`, all parameters are instead compared elementwise to that absolute
    tolerance; with `noisy_atol`, just the BatchNorm scales and biases and the linear
    head's bias (see the float32 test).
    """
    g_sd, d_sd = conversion.state_to_torch(jax.device_get(state), config)
    for ours, net, layout in (
        (g_sd, net_g, conversion.generator_layout(config)),
        (d_sd, net_d, conversion.discriminator_layout(config)),
    ):
        reference = _state_dict_numpy(net)
        assert ours.keys() == reference.keys()
        parameters = {name for name, _ in net.named_parameters()}
        noisy = {f"main.{i}.bias" for _, i, kind in layout if kind != "conv_transpose"}
        noisy |= {f"main.{i}.weight" for _, i, kind in layout if kind == "batch_norm"}
        for key, value in reference.items():
            if key.endswith("num_batches_tracked"):
                assert int(ours[key]) == int(value), key
            elif param_atol is not None and key in parameters:
                np.testing.assert_allclose(ours[key], value, rtol=0, atol=param_atol, err_msg=key)
            elif noisy_atol is not None and key in noisy:
                np.testing.assert_allclose(ours[key], value, rtol=0, atol=noisy_atol, err_msg=key)
            else:
                metric(ours[key], value, rel, key)


def _compare_gradients(state, net_g, net_d, opt_g, opt_d, config, rel):
    """Adam's first moments after one step, (1 - beta1) x gradient, against PyTorch's."""
    for net, opt, train_state, layout in (
        (net_g, opt_g, state.generator, conversion.generator_layout(config)),
        (net_d, opt_d, state.discriminator, conversion.discriminator_layout(config)),
    ):
        variables = {
            "params": jax.device_get(train_state.opt_state[0].mu),
            "batch_stats": train_state.batch_stats,
        }
        ours = conversion.flax_to_torch(variables, layout)
        for name, param in net.named_parameters():
            assert_close_l2(ours[name], opt.state[param]["exp_avg"].numpy(), rel, name)


def _train_both(arch, seed, dtype, num_steps, check, optimizers_out=None):
    config, state, (net_g, net_d, opt_g, opt_d), real, z = _setup(arch, seed, dtype)
    if optimizers_out is not None:
        optimizers_out += [opt_g, opt_d]
    step = jax.jit(steps.train_step_with_noise)
    rng = np.random.default_rng(seed + 1)
    for i in range(num_steps):
        if i > 0:
            real = rng.uniform(-1, 1, real.shape).astype(dtype)
            z = rng.standard_normal(z.shape).astype(dtype)
        state, metrics = step(state, jnp.asarray(real), jnp.asarray(z))
        reference = torch_reference.metrics_to_floats(
            torch_reference.train_step(net_g, net_d, opt_g, opt_d, _nchw(real), torch.from_numpy(z))
        )
        check(i, state, metrics, reference, (net_g, net_d, config))
    # Each D update sees 3 forward passes in training mode, each G update 1 (as in PyTorch).
    counts = jax.device_get(state.discriminator.batch_stats["BatchNorm_0"])
    assert int(counts["num_batches_tracked"]) == 3 * num_steps
    return state


# Float32 runs of the same math drift apart over training steps: Adam divides each gradient
# by its own running magnitude, so where a gradient is near zero float32 rounding noise of
# ~1e-7 flips its sign and the parameter moves by -lr instead of +lr. BatchNorm scales and
# biases and the linear head's bias are prone to it (their gradients nearly cancel by
# symmetry: D's real and fake passes pull opposite ways, and D's BatchNorm removes the
# uniform shifts G's would cause), and among thousands of weights one is sometimes close
# enough to zero too. So after one step the gradients themselves (Adam's first moments) are
# compared tightly and the parameters up to one such flip; after 10 steps the bounds are
# those measured over 24 fresh seeds with margin (worst: weights 1.9e-3 relative L2,
# BatchNorm biases 4e-2). The float64 test removes rounding and checks every tensor to 1e-7
# after 10 steps: the computations are the same.
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_training_steps_match_in_float32(arch, seed):
    lr = tiny_config().learning_rate

    def check(i, state, metrics, reference, nets):
        for key in reference:
            assert_close(metrics[key], reference[key], 1e-4 if i == 0 else 1e-2)
        if i == 0:
            _compare_gradients(state, *nets[:2], *optimizers, nets[2], 1e-4)
            _compare_states(state, *nets, 1e-4, assert_close_l2, param_atol=2.01 * lr)
        if i == 9:
            _compare_states(state, *nets, 1e-2, assert_close_l2, noisy_atol=20.1 * lr)

    optimizers = []
    _train_both(arch, seed, np.float32, 10, check, optimizers)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_training_steps_match_in_float64(arch, seed):
    def check(i, state, metrics, reference, nets):
        for key in reference:
            assert_close(metrics[key], reference[key], 1e-9)
        _compare_states(state, *nets, 1e-7)

    with jax.enable_x64(True):
        state = _train_both(arch, seed, np.float64, 10, check)
        assert state.generator.params["UpConv_0"]["kernel"].dtype == jnp.float64


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_torch_to_jax_to_torch_is_exact(arch):
    config = tiny_config(**ARCHITECTURES[arch])
    net_g, net_d, *_ = torch_reference.build(config, seed=3)
    gen = torch.Generator().manual_seed(3)
    _randomize_running_stats(net_g, gen)
    _randomize_running_stats(net_d, gen)
    for net, layout in (
        (net_g, conversion.generator_layout(config)),
        (net_d, conversion.discriminator_layout(config)),
    ):
        original = net.state_dict()
        variables = conversion.torch_to_flax(_state_dict_numpy(net), layout)
        back = conversion.flax_to_torch(jax.device_get(jax.device_put(variables)), layout)
        assert list(back) == list(original)
        for key, value in original.items():
            restored = torch.from_numpy(back[key])
            assert restored.dtype == value.dtype and torch.equal(restored, value), key
        # And the converted dict loads into a fresh reference module.
        net.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})


def test_mismatched_state_dict_is_refused_with_the_fix():
    from dcgan_jax.validation import UserError

    config = tiny_config(**ARCHITECTURES["celeba"])
    net_g, net_d, *_ = torch_reference.build(config)
    other = tiny_config(**{**ARCHITECTURES["celeba"], "g_features": 8})
    g, d = models.make_models(other)
    state = jax.eval_shape(lambda: create_state(other, g, d))
    with pytest.raises(UserError, match=r"main.0.weight has shape \(8, 32, 4, 4\), expected"):
        conversion.load_into_state(state, _state_dict_numpy(net_g), _state_dict_numpy(net_d), other)


@pytest.mark.parametrize("convolutions", ["matmul", "lax"])
def test_parity_module_measures_agreement_on_this_device(convolutions, seed):
    from dcgan_jax import parity

    config = tiny_config(**ARCHITECTURES["cifar"], z_dim=16, batch_size=8)
    result = parity.measure(config, convolutions, "highest", seed=seed)
    assert result["forward_holds_1e-5"] and result["gradients_hold_1e-4"], (seed, result)
    assert result["metrics"] < 1e-4, (seed, result)


def test_float64_gradient_errors_are_float32_rounding_on_the_cpu():
    from dcgan_jax import parity

    config = tiny_config(**ARCHITECTURES["cifar"], z_dim=16, batch_size=8)
    errors = parity.float64_gradient_errors(config, seed=1)
    assert set(errors) == {"jax matmul highest", "jax lax highest", "torch highest"}
    for side, by_tensor in errors.items():
        assert len(by_tensor) == 19, side  # every parameter of G (10) and D (9)
        assert max(by_tensor.values()) < 1e-4, (side, by_tensor)
