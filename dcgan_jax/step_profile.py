"""Where a training step's time goes, in both frameworks, phase by phase.

    python -m dcgan_jax.benchmark --config configs/cifar.py --profile

The step of pytorch/examples has the same phases on both sides: G forward; D forward and
backward on the real batch; D forward and backward on the (detached) fake batch; D's Adam
update; D forward on the fake batch again and the backward pass through D and G; G's Adam
update. PyTorch runs them one after the other, so each is timed between two clock reads
(with a device sync on CUDA). XLA compiles the whole step into one program and fuses
across phases, so each JAX phase is compiled and timed on its own (a backward pass as
forward + backward minus forward), and the fused step is timed whole: "rest" is the step
minus the sum of its phases (negative when fusion across phases saves time). Medians over
`repeats` runs; milliseconds.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import models, steps, train
from dcgan_jax.state import create_state

PHASES = (
    "G forward",
    "D forward, real",
    "D backward, real",
    "D forward, fake",
    "D backward, fake",
    "D Adam update",
    "D forward for G",
    "backward through D and G",
    "G Adam update",
)


def _median_ms(fn, repeats: int) -> float:
    fn()  # compiled / warmed up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile_jax(config, batch: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per phase of the JAX step (one device), and the fused step."""
    # One device; the phases are plain jitted functions, the step is `train`'s.
    generator, discriminator = models.make_models(config)
    state = create_state(config, generator, discriminator)
    g, d = state.generator, state.discriminator
    real = jnp.asarray(batch)
    z = jax.random.normal(jax.random.PRNGKey(0), (batch.shape[0], config.z_dim))

    def run(f, *args):
        return lambda: jax.block_until_ready(f(*args))

    g_forward = jax.jit(lambda g, z: steps.generate(g, z)[0])
    fake = g_forward(g, z)

    def d_apply(d_state, x):
        return steps._apply_train(d_state, d_state.params, d_state.batch_stats, x)[0]

    def d_loss(params, d_state, x, label):
        logits = steps._apply_train(d_state, params, d_state.batch_stats, x)[0]
        return steps.bce_with_logits(logits, label)

    d_forward = jax.jit(d_apply)
    d_grad = jax.jit(jax.grad(d_loss), static_argnums=3)
    grads = d_grad(d.params, d, real, 1.0)
    d_update = jax.jit(lambda s, grads: s.apply_gradients(grads=grads))

    def g_full_backward(g_state, d_state, z):
        fake, pullback, _ = steps.generate(g_state, z)
        return pullback(jax.grad(lambda x: d_loss(d_state.params, d_state, x, 1.0))(fake))[0]

    g_backward = jax.jit(g_full_backward)
    g_grads = g_backward(g, d, z)
    g_update = jax.jit(lambda s, grads: s.apply_gradients(grads=grads))
    # The whole step as `train` runs it (one device): it returns only what a step changes,
    # where a jitted `train_step_with_noise` would also copy what passes through (the EMA,
    # the fixed noise) into new buffers.
    device = jax.local_devices()[:1]
    step = train.train_step_for(config, device)
    step_state = train.replicate(train.init_state(config), device)
    step_batch = jax.device_put(batch[None], train.device_sharding(device))

    t = {}
    t["G forward"] = _median_ms(run(g_forward, g, z), repeats)
    t["D forward, real"] = _median_ms(run(d_forward, d, real), repeats)
    t["D backward, real"] = (
        _median_ms(run(d_grad, d.params, d, real, 1.0), repeats) - t["D forward, real"]
    )
    t["D forward, fake"] = _median_ms(run(d_forward, d, fake), repeats)
    t["D backward, fake"] = (
        _median_ms(run(d_grad, d.params, d, fake, 0.0), repeats) - t["D forward, fake"]
    )
    t["D Adam update"] = _median_ms(run(d_update, d, grads), repeats)
    t["D forward for G"] = t["D forward, fake"]
    # D forward + backward to its input, then G's forward again and its backward: less
    # the two forward passes, that is the backward through D and G.
    t["backward through D and G"] = (
        _median_ms(run(g_backward, g, d, z), repeats) - t["G forward"] - t["D forward for G"]
    )
    t["G Adam update"] = _median_ms(run(g_update, g, g_grads), repeats)
    state_holder = [step_state]

    def one_step():
        state_holder[0], metrics = step(state_holder[0], step_batch)
        jax.block_until_ready(metrics)

    t["step"] = _median_ms(one_step, repeats)
    t["rest"] = t["step"] - sum(t[p] for p in PHASES)
    return t


def profile_torch(config, batch: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per phase of the reference step, timed inside one eager step."""
    import torch

    from dcgan_jax import torch_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch_reference.use_tf32_for_speed()  # as the benchmark times it
    net_g, net_d, _, _ = torch_reference.build(config)
    net_g, net_d = net_g.to(device), net_d.to(device)
    opt_g, opt_d = torch_reference.make_optimizers(config, net_g, net_d)
    real = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device)
    noise = torch.randn(batch.shape[0], config.z_dim, device=device)
    criterion = torch.nn.BCELoss()
    ones = torch.ones(batch.shape[0], device=device)
    zeros = torch.zeros(batch.shape[0], device=device)

    def one_step() -> list[float]:
        marks = []

        def mark():
            sync()
            marks.append(time.perf_counter())

        mark()
        net_d.zero_grad()
        fake = net_g(noise)  # pytorch/examples draws G's forward before D's fake pass
        mark()
        output = net_d(real)
        mark()
        criterion(output, ones).backward()
        mark()
        output = net_d(fake.detach())
        mark()
        criterion(output, zeros).backward()
        mark()
        opt_d.step()
        mark()
        net_g.zero_grad()
        output = net_d(fake)
        mark()
        criterion(output, ones).backward()
        mark()
        opt_g.step()
        mark()
        return list(np.diff(marks) * 1000)

    one_step()
    samples = [one_step() for _ in range(repeats)]
    t = {name: statistics.median(s[i] for s in samples) for i, name in enumerate(PHASES)}
    t["step"] = statistics.median(sum(s) for s in samples)
    t["rest"] = 0.0  # the phases cover the whole eager step
    return t


def profile(config, repeats: int = 5, torch_side: bool = True) -> dict:
    """Both frameworks' phase times (ms) for `config`'s model and batch size."""
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    batch = rng.uniform(-1, 1, shape).astype(np.float32)
    results = {"batch_size": config.batch_size, "jax": profile_jax(config, batch, repeats)}
    if torch_side:
        results["torch"] = profile_torch(config, batch, repeats)
    return results


def format_profile(results: dict) -> str:
    sides = [s for s in ("jax", "torch") if s in results]
    lines = [
        f"Where a step goes, batch {results['batch_size']}, ms (median):",
        f"{'phase':28}"
        + "".join(f"{s:>10}" for s in sides)
        + ("   jax/torch" if len(sides) == 2 else ""),
    ]
    for phase in (*PHASES, "rest", "step"):
        row = f"{phase:28}" + "".join(f"{results[s][phase]:10.1f}" for s in sides)
        if len(sides) == 2 and results["torch"][phase] > 0.05:
            row += f"{results['jax'][phase] / results['torch'][phase]:11.2f}x"
        lines.append(row)
    return "\n".join(lines)
