import jax
import numpy as np
import pytest

from dcgan_jax import train
from dcgan_jax.steps import step_noise
from tests.conftest import tiny_config


def _images(batch, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)


def _run(config, images, num_devices, num_steps):
    devices = jax.local_devices()[:num_devices]
    p_step = train.make_p_train_step(devices)
    state = train.replicate(train.init_state(config), devices)
    metrics = None
    for step in range(num_steps):
        batch = images[step].reshape(num_devices, -1, *images.shape[2:])
        state, metrics = p_step(state, batch)
    return jax.device_get(train.unreplicate(state)), jax.device_get(metrics)


def test_two_devices_equal_one_device_with_the_global_batch():
    config = tiny_config(batch_size=8)
    images = _images(3 * 8).reshape(3, 8, 16, 16, 1)
    one, m1 = _run(config, images, num_devices=1, num_steps=3)
    two, m2 = _run(config, images, num_devices=2, num_steps=3)
    assert int(one.step) == int(two.step) == 3
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in m1:
        np.testing.assert_allclose(m1[key][0], m2[key][0], rtol=1e-5, atol=1e-6)
    # Both devices hold the same state after a step.
    np.testing.assert_array_equal(m2["d_loss"][0], m2["d_loss"][1])


@pytest.mark.optimized
def test_step_noise_is_the_global_noise_split_by_device():
    # Bitwise, as users compile: with most optimizations off, XLA:CPU's legacy emitters
    # (xla_flags.CPU_FUSION_EMITTERS) round a few of the sliced draws an ulp differently.
    # Both sides are fresh programs (new functions), so both compile at that level.
    config = tiny_config(batch_size=8)
    state = train.init_state(config)
    whole = jax.jit(lambda s: step_noise(s, 8, axis_name=None))(state)
    per_device = jax.pmap(lambda s: step_noise(s, 4, "batch"), axis_name="batch")(
        train.replicate(state, jax.local_devices())
    )
    np.testing.assert_array_equal(np.asarray(per_device).reshape(8, -1), whole)


def test_training_changes_both_networks_and_batch_stats():
    config = tiny_config(batch_size=8)
    before = jax.device_get(train.init_state(config))
    after, metrics = _run(config, _images(8).reshape(1, 8, 16, 16, 1), 2, 1)
    for name in ("generator", "discriminator"):
        b, a = getattr(before, name), getattr(after, name)
        for leaf_b, leaf_a in zip(
            jax.tree_util.tree_leaves((b.params, b.batch_stats)),
            jax.tree_util.tree_leaves((a.params, a.batch_stats)),
            strict=True,
        ):
            assert not np.allclose(leaf_b, leaf_a)
    assert set(metrics) == {"d_loss", "g_loss", "D(x)", "D(G(z))", "D(G(z))_after"}
    assert np.all(np.isfinite([v for v in metrics.values()]))


def test_step_leaves_its_input_usable_and_passes_unchanged_parts_through():
    """Nothing is donated: the state a step read stays valid (the same step from it again
    gives the same state), and what the step does not change is the caller's own arrays."""
    devices = jax.local_devices()[:2]
    batch = _images(8).reshape(2, 4, 16, 16, 1)
    state = train.replicate(train.init_state(tiny_config(batch_size=8)), devices)
    p_step = train.make_p_train_step(devices)
    first, _ = p_step(state, batch)
    again, _ = p_step(state, batch)
    for a, b in zip(
        jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert int(first.step[0]) == 1 and int(state.step[0]) == 0
    assert first.rng is state.rng and first.fixed_noise is state.fixed_noise
    assert first.ema_params is state.ema_params  # the EMA is off: not touched

    ema_state = train.replicate(train.init_state(tiny_config(batch_size=8, ema_decay=0.5)), devices)
    with_ema, _ = train.make_p_train_step(devices, update_ema=True)(ema_state, batch)
    # ema <- 0.5 * ema + 0.5 * params (the EMA starts at the initial parameters)
    for ema, old, new in zip(
        jax.tree_util.tree_leaves(with_ema.ema_params),
        jax.tree_util.tree_leaves(ema_state.ema_params),
        jax.tree_util.tree_leaves(with_ema.generator.params),
        strict=True,
    ):
        np.testing.assert_allclose(ema, 0.5 * np.asarray(old) + 0.5 * np.asarray(new), atol=1e-7)


def test_half_precision_step_keeps_float32_state_and_close_metrics():
    from dcgan_jax import models, steps
    from dcgan_jax.state import create_state

    real = _images(8)
    results = {}
    for half in (False, True):
        config = tiny_config(half_precision=half)
        state = create_state(config, *models.make_models(config))
        results[half] = jax.jit(steps.train_step)(state, real)
    state, metrics = results[True]
    for leaf in jax.tree_util.tree_leaves((state.generator, state.discriminator)):
        assert leaf.dtype in (np.float32, np.int32)
    for key, value in results[False][1].items():
        np.testing.assert_allclose(metrics[key], value, rtol=2e-2)
