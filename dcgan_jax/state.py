"""The GAN's complete training state as one pytree: both networks, the key, the fixed noise.

Everything a run needs to continue exactly lives here, so a checkpoint of this pytree
restores a run bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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


# A TrainState's `apply_fn` and `tx` are static parts of its pytree structure: jitted
# functions of a state are traced and compiled again whenever they compare unequal. Both
# are therefore equal for equal models and settings, so that states built separately (a
# resumed run, the tests, the parity module's dozens of draws) share compiled programs.
# With a bound method (`module.apply`, compared by the module's identity) and a fresh optax
# closure per state, every new state recompiled every program, and each compilation maps
# new code pages: the parity test crashed at Linux's 65,530 mappings after ~34 draws.


@functools.cache
def _adam(learning_rate: float, beta1: float, beta2: float) -> optax.GradientTransformation:
    """Adam as in the paper; same update rule as torch.optim.Adam (eps outside the sqrt).
    The same object for the same settings (see above)."""
    return optax.adam(learning_rate, b1=beta1, b2=beta2, eps=1e-8)


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """`module.apply`, equal (and hashing equal) for equal modules (see above)."""

    module: nn.Module

    def __call__(self, *args, **kwargs):
        return self.module.apply(*args, **kwargs)


def _init_network(
    module: nn.Module, key: jax.Array, example: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    variables = module.init(key, example, train=False)
    return TrainState.create(
        apply_fn=ModuleApply(module),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
    )


class _InitSettings(NamedTuple):
    """What the initial state depends on besides the models and the seed (hashable, unlike
    a config)."""

    z_dim: int
    image_size: int
    channels: int
    num_samples: int
    ema_decay: float
    learning_rate: float
    beta1: float
    beta2: float


def _settings_and_seed(config) -> tuple[_InitSettings, np.int32]:
    settings = _InitSettings(
        *(operator.index(config[k]) for k in ("z_dim", "image_size", "channels", "num_samples")),
        *(float(config[k]) for k in ("ema_decay", "learning_rate", "beta1", "beta2")),
    )
    # The seed is an argument, not part of the compiled program (the same keys: seeds are
    # in [0, 2**31), validation.py).
    return settings, np.int32(operator.index(config.seed))


def create_state(config, generator: nn.Module, discriminator: nn.Module) -> GANState:
    """Freshly initialised state for `config` (deterministic in `config.seed`)."""
    settings, seed = _settings_and_seed(config)
    if jax.default_backend() == "cpu":
        return _compiled_for_cpu(settings, generator, discriminator)(seed)
    return _create_state(settings, generator, discriminator, seed)


def abstract_state(config, generator: nn.Module, discriminator: nn.Module) -> GANState:
    """`create_state`'s shapes and dtypes (`jax.ShapeDtypeStruct`s): traced, neither
    compiled nor run; `create_state` reuses the trace."""
    settings, seed = _settings_and_seed(config)
    return jax.eval_shape(
        functools.partial(_create_state, settings, generator, discriminator), seed
    )


# One compiled initialisation instead of hundreds of op-by-op dispatches, compiled once per
# models and settings.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _create_state(
    settings: _InitSettings, generator: nn.Module, discriminator: nn.Module, seed: jax.Array
) -> GANState:
    noise_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    # Parameters are drawn with the RBG generator: XLA:CPU compiles the initialisation of
    # all layers with it in ~1 s, against ~7 s with threefry (same distributions).
    g_key, d_key = jax.random.split(jax.random.key(seed, impl="rbg"))
    tx = _adam(settings.learning_rate, settings.beta1, settings.beta2)
    z = jnp.zeros((1, settings.z_dim), jnp.float32)
    size = settings.image_size
    images = jnp.zeros((1, size, size, settings.channels), jnp.float32)
    g_state = _init_network(generator, g_key, z, tx)
    return GANState(
        generator=g_state,
        discriminator=_init_network(discriminator, d_key, images, tx),
        rng=train_key,
        fixed_noise=jax.random.normal(noise_key, (settings.num_samples, settings.z_dim)),
        ema_params=g_state.params,
        ema_decay=jnp.asarray(settings.ema_decay, jnp.float32),
    )


def forget_compiled_initialisations() -> None:
    """Drops the initialisations compiled for the CPU (`jax.clear_caches()` does not)."""
    _compiled_for_cpu.cache_clear()


@functools.lru_cache(maxsize=8)
def _compiled_for_cpu(settings: _InitSettings, generator: nn.Module, discriminator: nn.Module):
    """`_create_state` as XLA:CPU compiles it (~100 small kernels of key arithmetic and random
    draws, run once) with LLVM's optimisations off: 0.85 s against 1.3-1.7 (celeba, 2-core
    Intel Xeon), time the training step's own compilation shares the cores with (train.py
    compiles both at once). The draws' last bit may differ (about 4% of the weights by one
    ulp against the optimised program's, instructions chosen differently): the same
    distribution."""
    lowered = _create_state.lower(settings, generator, discriminator, np.int32(0))
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
