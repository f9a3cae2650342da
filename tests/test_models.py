import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import default_config, models, sampling
from dcgan_jax.state import abstract_state, create_state


def _load_config(name):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("height,width", [(4, 4), (3, 5), (8, 2)])
def test_fast_up_conv_equals_dilated_conv(height, width):
    k1, k2 = jax.random.split(jax.random.PRNGKey(height * 10 + width))
    x = jax.random.normal(k1, (2, height, width, 5))
    kernel = jax.random.normal(k2, (4, 4, 5, 7))
    fast = models._matmul_conv_transpose(x, kernel)
    reference = models._pytorch_conv_transpose(x, kernel)
    assert fast.shape == (2, 2 * height, 2 * width, 7)
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", ["matmul", "mixed"])
@pytest.mark.parametrize("height,width,c_in", [(8, 8, 3), (4, 6, 3), (16, 2, 3), (16, 16, 5)])
def test_fast_down_conv_equals_strided_conv(formulation, height, width, c_in):
    k1, k2 = jax.random.split(jax.random.PRNGKey(height * 10 + width))
    x = jax.random.normal(k1, (2, height, width, c_in))
    kernel = jax.random.normal(k2, (4, 4, c_in, 6))
    fast = models._DOWN_CONV[formulation](x, kernel)
    reference = models._pytorch_strided_conv(x, kernel)
    assert fast.shape == (2, height // 2, width // 2, 6)
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)


# (16, 16, 5) and (8, 8, 8): "mixed" takes XLA's native convolution with the matrix
# product's input gradient (a custom VJP; on 8x8 inputs where XLA's own convolution kernels
# run, as in the tests); (4, 4, 3): the matrix-product formulation.
@pytest.mark.parametrize("height,width,c_in", [(4, 4, 3), (16, 16, 5), (8, 8, 8)])
def test_fast_convs_have_equal_gradients(height, width, c_in):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (2, height, width, c_in))
    kernel = jax.random.normal(k2, (4, 4, c_in, 5))
    for fast, slow in [
        (models._matmul_conv_transpose, models._pytorch_conv_transpose),
        (models._matmul_strided_conv, models._pytorch_strided_conv),
        (models._mixed_strided_conv, models._pytorch_strided_conv),
    ]:
        loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
        g_fast = jax.grad(loss(fast), argnums=(0, 1))(x, kernel)
        g_slow = jax.grad(loss(slow), argnums=(0, 1))(x, kernel)
        for a, b in zip(g_fast, g_slow, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_mixed_products_take_kernel_gradients_on_a_written_out_transpose_where_wide():
    # models._mixed_product: the same gradients (float64), and the transpose written out
    # (an optimisation barrier in the program) exactly where the input is wide enough.
    from dcgan_jax.parity import float64_enabled

    # D's matrix-product formulation with `mixed`'s products (what `mixed` takes on D's
    # image layer, and on the wider ones where YNN runs the convolutions; see the test
    # below): here on inputs wide enough for the transpose, and not.
    def mixed_matmul_strided_conv(x, kernel):
        return models._matmul_strided_conv(x, kernel, models._mixed_product)

    with float64_enabled():
        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        for c_in, up_transposes, down_transposes in (
            (512, True, True),
            (32, False, True),
            (8, False, False),
        ):
            x = jax.random.normal(k1, (2, 4, 4, c_in), jnp.float64)
            kernel = jax.random.normal(k2, (4, 4, c_in, 5), jnp.float64)
            for fast, slow, transposes in [
                (models._mixed_conv_transpose, models._pytorch_conv_transpose, up_transposes),
                (mixed_matmul_strided_conv, models._pytorch_strided_conv, down_transposes),
            ]:
                loss = lambda f: lambda inputs, k: jnp.sum(jnp.sin(f(inputs, k)))
                grad = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))
                g_fast, g_slow = grad(x, kernel), jax.grad(loss(slow), argnums=(0, 1))(x, kernel)
                for a, b in zip(g_fast, g_slow, strict=True):
                    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
                program = grad.lower(x, kernel).as_text()
                assert ("optimization_barrier" in program) == transposes, (fast, c_in)
    # Up to 2^22 elements (16 MiB in float32), where the copy was measured to pay.
    wide = lambda rows: jax.ShapeDtypeStruct((rows, 512), jnp.float32)
    assert models._transposes_for_kernel_gradient(wide(8192))
    assert not models._transposes_for_kernel_gradient(wide(8193))


@pytest.mark.parametrize("ynn_convolutions", [False, True])
def test_mixed_takes_the_native_convolution_on_d_layers_wider_than_an_image(
    ynn_convolutions, monkeypatch
):
    # With XLA's own convolution kernels (what the CLIs select) every layer wider than an
    # image's channels; with YNN's only inputs of 16x16 or more at batches up to 64. (8
    # output channels keep every case below Winograd's `WINOGRAD_MIN_DOWN_MULTIPLY_ADDS`.)
    monkeypatch.setattr(models.xla_flags, "ynn_runs_convolutions", lambda: ynn_convolutions)
    kernel = lambda c_in: jax.ShapeDtypeStruct((4, 4, c_in, 8), jnp.float32)

    def takes_native(batch, size, c_in):
        x = jax.ShapeDtypeStruct((batch, size, size, c_in), jnp.float32)
        # A new function each time: a cached trace would not read the patched choice.
        conv = lambda x, kernel: models._mixed_strided_conv(x, kernel)
        jaxpr = str(jax.make_jaxpr(conv)(x, kernel(c_in)))
        return "conv_general_dilated" in jaxpr

    assert takes_native(64, 32, 64) and takes_native(16, 16, 128)
    assert not takes_native(64, 64, 3) and not takes_native(64, 32, 1)
    assert takes_native(64, 8, 256) == (not ynn_convolutions)
    assert takes_native(256, 32, 64) == (not ynn_convolutions)


@pytest.mark.parametrize(
    "up,batch,height,width,c_in,c_out",
    [
        (True, 2, 4, 4, 5, 7),
        (True, 3, 2, 6, 6, 4),
        (True, 1, 8, 2, 3, 2),
        (False, 2, 4, 4, 5, 7),
        (False, 3, 8, 12, 6, 4),
        (False, 1, 16, 4, 3, 2),
    ],
)
def test_winograd_convolutions_are_the_convolutions(up, batch, height, width, c_in, c_out):
    # Values and both gradients against lax in float64, where only rounding separates them;
    # and in float32 within the other formulations' bound.
    from dcgan_jax.parity import float64_enabled

    ours = models.winograd.conv_transpose if up else models.winograd.strided_conv
    reference = models._pytorch_conv_transpose if up else models._pytorch_strided_conv
    rng = np.random.default_rng(height * 100 + width * 10 + c_in)
    x = rng.standard_normal((batch, height, width, c_in))
    kernel = rng.standard_normal((4, 4, c_in, c_out))
    with float64_enabled():
        expected = reference(jnp.asarray(x), jnp.asarray(kernel))
        cotangent = jnp.asarray(rng.standard_normal(expected.shape))
        pullback = lambda f: jax.vjp(f, jnp.asarray(x), jnp.asarray(kernel))[1](cotangent)
        grads = [pullback(ours), pullback(reference)]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            ours(jnp.asarray(x), jnp.asarray(kernel)), expected, atol=1e-13 * scale
        )
        for a, b in zip(*grads, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-13 * np.abs(b).max())
    fast = ours(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("up", [True, False])
def test_winograd_convolutions_in_bfloat16_round_like_bfloat16(up):
    # `mixed` takes Winograd under half_precision too: the transforms round to bfloat16
    # before the products, a few roundings of 2^-9 each, so the error stays within 2^-6 of
    # the result's RMS (measured: about twice the direct sum's).
    from dcgan_jax.parity import float64_enabled

    ours = models.winograd.conv_transpose if up else models.winograd.strided_conv
    reference = models._pytorch_conv_transpose if up else models._pytorch_strided_conv
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8, 8, 32))
    kernel = 0.05 * rng.standard_normal((4, 4, 32, 16))
    with float64_enabled():
        expected = np.asarray(reference(jnp.asarray(x), jnp.asarray(kernel)))
    got = ours(jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    error = np.asarray(got, np.float64) - expected
    assert np.sqrt(np.mean(error**2) / np.mean(expected**2)) < 2**-6


def test_winograd_convolutions_refuse_sizes_they_do_not_tile():
    kernel = jnp.zeros((4, 4, 2, 2))
    with pytest.raises(ValueError, match="even size"):
        models.winograd.conv_transpose(jnp.zeros((1, 3, 4, 2)), kernel)
    with pytest.raises(ValueError, match="divisible by 4"):
        models.winograd.strided_conv(jnp.zeros((1, 8, 6, 2)), kernel)


def test_mixed_takes_winograd_on_generator_layers_at_least_256_wide():
    def products(conv, c_in, c_out, size=4):
        x = jax.ShapeDtypeStruct((2, size, size, c_in), jnp.float32)
        kernel = jax.ShapeDtypeStruct((4, 4, c_in, c_out), jnp.float32)
        return str(jax.make_jaxpr(conv)(x, kernel)).count("dot_general[")

    # Winograd's 25 products; the matrix-product formulation's 1.
    assert products(models._mixed_conv_transpose, 256, 256) == 25
    assert products(models._mixed_conv_transpose, 1024, 512) == 25
    assert products(models._mixed_conv_transpose, 256, 255) == 1
    assert products(models._mixed_conv_transpose, 255, 512) == 1
    # D: Winograd's 9 products on layers of at least 2^23 multiply-adds per image (celeba's
    # three wide layers, cifar's two), else the native (0) or matrix-product (1) paths of
    # the test above.
    down = ((32, 64, 128), (16, 128, 256), (8, 256, 512), (16, 64, 128), (8, 128, 256))
    for size, c_in, c_out in down:
        assert products(models._mixed_strided_conv, c_in, c_out, size) == 9
    for size, c_in, c_out in ((8, 64, 128), (16, 63, 128), (8, 128, 255), (64, 3, 2048)):
        assert products(models._mixed_strided_conv, c_in, c_out, size) <= 1
    # Sizes Winograd does not tile (not multiples of 4) keep the other paths.
    assert products(models._mixed_strided_conv, 256, 512, 10) <= 1
    # Values on one layer of each that takes Winograd's path.
    cases = (
        (models._mixed_conv_transpose, models._pytorch_conv_transpose, (2, 4, 4, 256), 256, 0.1),
        (models._mixed_strided_conv, models._pytorch_strided_conv, (1, 8, 8, 256), 512, 0.05),
    )
    for seed, (conv, reference, shape, c_out, scale) in enumerate(cases):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed + 1))
        x = jax.random.normal(k1, shape)
        kernel = scale * jax.random.normal(k2, (4, 4, shape[-1], c_out))
        np.testing.assert_allclose(conv(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)


def _param_counts(config):
    g, d = models.make_models(config)
    state = abstract_state(config, g, d)
    return models.count_params(state.generator.params), models.count_params(
        state.discriminator.params
    )


def test_cifar_parameter_counts():
    # G: 100*1024*16 + 1024*512*16 + 512*256*16 + 256*3*16 convs, + 2*(1024+512+256) BN.
    # D: 3*64*16 + 64*128*16 + 128*256*16 convs, 2*(128+256) BN, 4*4*256 + 1 linear.
    assert _param_counts(_load_config("cifar")) == (12_140_032, 663_297)


def test_celeba_parameter_counts_equal_pytorch_examples():
    # pytorch/examples dcgan/main.py with nz=100, ngf=ndf=64, nc=3.
    assert _param_counts(_load_config("celeba")) == (3_576_704, 2_765_568)


@pytest.mark.parametrize("image_size", [16, 64])
def test_shapes_follow_image_size(image_size):
    config = default_config.get_config()
    config.image_size, config.g_features, config.d_features = image_size, 4, 4
    g, d = models.make_models(config)
    state = create_state(config, g, d)
    z = jnp.zeros((3, config.z_dim))
    images = jax.jit(sampling.generate_eval)(state.generator, z)
    assert images.shape == (3, image_size, image_size, 3)
    logits = jax.eval_shape(
        lambda s, x: s.apply_fn({"params": s.params, "batch_stats": s.batch_stats}, x, train=False),
        state.discriminator,
        images,
    )
    assert logits.shape == (3,)
    n_blocks = int(np.log2(image_size)) - 2
    assert len([k for k in state.generator.params if k.startswith("UpConv")]) == n_blocks
    assert len([k for k in state.discriminator.params if k.startswith("DownConv")]) == n_blocks


def test_image_size_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        models.num_resolution_blocks(48)


@pytest.mark.optimized
def test_dcgan_initialisation():
    config = _load_config("cifar")
    g, d = models.make_models(config)
    state = create_state(config, g, d)
    kernel = np.asarray(state.generator.params["UpConv_0"]["kernel"])
    assert abs(kernel.std() - 0.02) < 0.001 and abs(kernel.mean()) < 0.001
    bn = state.generator.params["BatchNorm_0"]
    assert abs(np.asarray(bn["scale"]).mean() - 1) < 0.005
    assert abs(np.asarray(bn["scale"]).std() - 0.02) < 0.005
    assert not np.asarray(bn["bias"]).any()


def test_batchnorm_tracks_unbiased_variance_with_pytorch_momentum():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2)) * 3 + 1
    bn = models.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.PRNGKey(1), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 2)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    scale = np.asarray(variables["params"]["scale"])
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * scale
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), expected, rtol=1e-4, atol=1e-5)


def test_auto_convolutions_follow_the_backend_measurements():
    assert models.resolve_convolutions("auto", "cpu") == "mixed"
    assert models.resolve_convolutions("auto", "cuda") == models.AUTO_CONVOLUTIONS["gpu"]
    assert models.resolve_convolutions("auto", "tpu") == "lax"
    assert models.resolve_convolutions("lax", "cpu") == "lax"
    with pytest.raises(ValueError, match="'auto', 'matmul', 'mixed', 'winograd' or 'lax'"):
        models.resolve_convolutions("fast", "cpu")


@pytest.mark.parametrize("fast,expected", [(True, "auto"), (False, "lax")])
def test_configs_with_the_old_fast_convolutions_field_still_load(fast, expected):
    from dcgan_jax import default_config
    from dcgan_jax.validation import validate_config

    config = default_config.get_config()
    with config.unlocked():
        del config["convolutions"]
        config.fast_convolutions = fast  # as a checkpoint of an older version stores it
    validate_config(config, 1)
    assert "fast_convolutions" not in config and config.convolutions == expected
    g, _ = models.make_models(config)
    assert g.convolutions == models.resolve_convolutions(expected)
