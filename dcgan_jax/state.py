"""The GAN's complete training state as one pytree: both networks, the key, the fixed noise.

Everything a run needs to continue exactly lives here, so a checkpoint of this pytree
restores a run bit for bit.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """A Flax TrainState that also carries the network's BatchNorm statistics."""

    batch_stats: Any


@struct.dataclass
class GANState:
    """Generator and discriminator TrainStates, the run's PRNG key and the sample noise.

    The noise of step t is drawn from `fold_in(rng, t)`, so `rng` never changes and a
    resumed run draws the same noise an uninterrupted one would.
    """

    generator: TrainState
    discriminator: TrainState
    rng: jax.Array  # a raw uint32 key, which checkpoints as a plain array
    fixed_noise: jax.Array  # (num_samples, z_dim), for the sample grids
    # Exponential moving average of the generator's parameters, updated after every G
    # step as ema <- decay * ema + (1 - decay) * params while decay > 0 (not updated, and
    # not used, when the EMA is off).
    ema_params: Any
    ema_decay: jax.Array  # float32 scalar, from config.ema_decay

    @property
    def step(self) -> jax.Array:
        """Completed training steps (each updates both networks once)."""
        return self.generator.step

    @property
    def keeps_ema(self) -> bool:
        return float(self.ema_decay) > 0  # host-side: read outside jit

    def sampling_generator(self) -> TrainState:
        """The generator to sample and evaluate with: its EMA weights when the run keeps an
        EMA, else its weights; with its BatchNorm running statistics either way."""
        if self.keeps_ema:
            return self.generator.replace(params=self.ema_params)
        return self.generator

    def with_ema_decay(self, decay: float) -> GANState:
        """This state continuing under `decay` (a resumed run may switch the EMA on: it then
        starts from the current weights)."""
        switched_on = decay > 0 and not self.keeps_ema
        ema_params = self.generator.params if switched_on else self.ema_params
        return self.replace(ema_params=ema_params, ema_decay=jnp.asarray(decay, jnp.float32))


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam as in the paper; same update rule as torch.optim.Adam (eps outside the sqrt)."""
    return optax.adam(config.learning_rate, b1=config.beta1, b2=config.beta2, eps=1e-8)


def _init_network(
    module: nn.Module, key: jax.Array, example: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    variables = module.init(key, example, train=False)
    return TrainState.create(
        apply_fn=module.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
    )


def create_state(config, generator: nn.Module, discriminator: nn.Module) -> GANState:
    """Freshly initialised state for `config` (deterministic in `config.seed`)."""
    # One compiled initialisation instead of hundreds of op-by-op dispatches.
    return jax.jit(lambda: _create_state(config, generator, discriminator))()


def _create_state(config, generator: nn.Module, discriminator: nn.Module) -> GANState:
    noise_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    # Parameters are drawn with the RBG generator: XLA:CPU compiles the initialisation of
    # all layers with it in ~1 s, against ~7 s with threefry (same distributions).
    g_key, d_key = jax.random.split(jax.random.key(config.seed, impl="rbg"))
    tx = make_optimizer(config)
    z = jnp.zeros((1, config.z_dim), jnp.float32)
    images = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
    g_state = _init_network(generator, g_key, z, tx)
    return GANState(
        generator=g_state,
        discriminator=_init_network(discriminator, d_key, images, tx),
        rng=train_key,
        fixed_noise=jax.random.normal(noise_key, (config.num_samples, config.z_dim)),
        ema_params=g_state.params,
        ema_decay=jnp.asarray(config.ema_decay, jnp.float32),
    )
