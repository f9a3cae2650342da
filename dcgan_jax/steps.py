"""One DCGAN training step as pure functions; jit/pmap is applied by the caller.

The step follows pytorch/examples `dcgan/main.py` exactly:
  1. fake = G(z), in training mode (G's BatchNorm statistics update once);
  2. `d_step`: D on the real batch, then on the detached fake batch (D's statistics update
     twice), loss = BCE(D(x), 1) + BCE(D(G(z)), 0), one Adam update of D;
  3. `g_step`: the *updated* D on the same fake batch (D's statistics update a third time),
     loss = BCE(D(G(z)), 1) (the non-saturating loss), one Adam update of G.
G's forward pass is computed once and differentiated with `jax.vjp`, as PyTorch reuses its
graph, so no work is repeated.

With `axis_name` set the functions run under `pmap`: gradients, losses and BatchNorm
statistics are averaged over the devices, which is the same as one device with the global
batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dcgan_jax.state import GANState, TrainState

Metrics = dict[str, jax.Array]


def bce_with_logits(logits: jax.Array, label: float) -> jax.Array:
    """Mean binary cross-entropy of `logits` against a constant label."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)).mean()


def _pmean(tree, axis_name: str | None):
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def _apply_train(state: TrainState, params, batch_stats, inputs: jax.Array):
    """Runs a network in training mode; returns (outputs, updated batch_stats)."""
    outputs, updates = state.apply_fn(
        {"params": params, "batch_stats": batch_stats}, inputs, train=True, mutable=["batch_stats"]
    )
    return outputs, updates["batch_stats"]


def generate(g_state: TrainState, z: jax.Array) -> tuple[jax.Array, Callable, dict]:
    """G(z) in training mode, its pullback to G's parameters, and G's new BatchNorm stats."""
    forward = lambda params: _apply_train(g_state, params, g_state.batch_stats, z)
    fake, pullback, batch_stats = jax.vjp(forward, g_state.params, has_aux=True)
    return fake, pullback, batch_stats


def d_step(
    d_state: TrainState, real: jax.Array, fake: jax.Array, axis_name: str | None = None
) -> tuple[TrainState, Metrics]:
    """One Adam update of D on a real and a (detached) fake batch."""
    fake = lax.stop_gradient(fake)

    def loss_fn(params):
        real_logits, stats = _apply_train(d_state, params, d_state.batch_stats, real)
        fake_logits, stats = _apply_train(d_state, params, stats, fake)
        loss = bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0)
        return loss, (stats, real_logits, fake_logits)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, real_logits, fake_logits)), grads = grad_fn(d_state.params)
    grads = _pmean(grads, axis_name)
    d_state = d_state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        "d_loss": loss,
        "D(x)": jax.nn.sigmoid(real_logits).mean(),
        "D(G(z))": jax.nn.sigmoid(fake_logits).mean(),
    }
    return d_state, _pmean(metrics, axis_name)


def g_step(
    g_state: TrainState,
    g_batch_stats,
    d_state: TrainState,
    fake: jax.Array,
    pullback: Callable,
    axis_name: str | None = None,
) -> tuple[TrainState, TrainState, Metrics]:
    """One Adam update of G through the (updated) D; D's BatchNorm statistics move too."""

    def loss_fn(fake_images):
        logits, stats = _apply_train(d_state, d_state.params, d_state.batch_stats, fake_images)
        return bce_with_logits(logits, 1.0), (stats, logits)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (d_batch_stats, logits)), grad_fake = grad_fn(fake)
    (grads,) = pullback(grad_fake)
    grads = _pmean(grads, axis_name)
    g_state = g_state.apply_gradients(grads=grads, batch_stats=g_batch_stats)
    d_state = d_state.replace(batch_stats=d_batch_stats)
    metrics = {"g_loss": loss, "D(G(z))_after": jax.nn.sigmoid(logits).mean()}
    return g_state, d_state, _pmean(metrics, axis_name)


def ema_decay_at(decay: jax.Array, step: jax.Array, warmup: bool) -> jax.Array:
    """The EMA decay of the update after `step` completed steps: `decay`, or with `warmup`
    TensorFlow's min(decay, (1 + step) / (10 + step)), which lets the average forget the
    random initial weights within the first few hundred steps instead of ~1/(1 - decay)
    (measured on the digits: README "Quality")."""
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step_with_noise(
    state: GANState,
    real: jax.Array,
    z: jax.Array,
    axis_name: str | None = None,
    update_ema: bool = False,
    ema_warmup: bool = False,
) -> tuple[GANState, Metrics]:
    """One full DCGAN step (D update, then G update) on given real images and noise.

    With `update_ema` (static: the EMA costs a pass over G's parameters, skipped when the
    run keeps none), `ema_params <- d * ema_params + (1 - d) * params` with
    d = `ema_decay_at(state.ema_decay, step, ema_warmup)`.
    """
    fake, pullback, g_batch_stats = generate(state.generator, z)
    d_state, d_metrics = d_step(state.discriminator, real, fake, axis_name)
    g_state, d_state, g_metrics = g_step(
        state.generator, g_batch_stats, d_state, fake, pullback, axis_name
    )
    state = state.replace(generator=g_state, discriminator=d_state)
    if update_ema:
        decay = ema_decay_at(state.ema_decay, state.step - 1, ema_warmup)
        ema = jax.tree_util.tree_map(
            lambda e, p: p + decay * (e - p), state.ema_params, g_state.params
        )
        state = state.replace(ema_params=ema)
    return state, {**d_metrics, **g_metrics}


def step_noise(state: GANState, per_device_batch: int, axis_name: str | None) -> jax.Array:
    """This device's share of the step's latent noise.

    The noise is drawn for the whole global batch from `fold_in(rng, step)` and sliced by
    device index, so it does not depend on how many devices share the batch.
    """
    num_devices = 1 if axis_name is None else lax.axis_size(axis_name)
    z_dim = state.fixed_noise.shape[-1]
    key = jax.random.fold_in(state.rng, state.step)
    z = jax.random.normal(key, (num_devices * per_device_batch, z_dim))
    if axis_name is None:
        return z
    start = lax.axis_index(axis_name) * per_device_batch
    return lax.dynamic_slice_in_dim(z, start, per_device_batch)


def train_step(
    state: GANState,
    real: jax.Array,
    axis_name: str | None = None,
    update_ema: bool = False,
    ema_warmup: bool = False,
) -> tuple[GANState, Metrics]:
    """One DCGAN step on a batch of real images, with the step's own noise."""
    z = step_noise(state, real.shape[0], axis_name)
    return train_step_with_noise(state, real, z, axis_name, update_ema, ema_warmup)
