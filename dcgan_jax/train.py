"""Training loop: `train_and_evaluate(config, workdir)`, and the `python -m` entry point.

    python -m dcgan_jax.train --config configs/cifar.py --workdir runs/cifar \
        [--config.batch_size=128 ...]
"""

from __future__ import annotations

import collections
import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from dcgan_jax import checkpointing, models, sampling, steps
from dcgan_jax.state import GANState, create_state
from dcgan_jax.validation import check_workdir_writable, exit_on_user_error, validate_config

AXIS_NAME = "batch"


def make_p_train_step(devices=None):
    """`steps.train_step` data-parallel over `devices` (default: all local ones).

    The state argument is donated: its buffers are reused for the new state.
    """
    return jax.pmap(
        functools.partial(steps.train_step, axis_name=AXIS_NAME),
        axis_name=AXIS_NAME,
        devices=devices,
        donate_argnums=(0,),
    )


def init_state(config) -> GANState:
    """A fresh, unreplicated state whose modules synchronise over the pmap axis."""
    generator, discriminator = models.make_models(config, axis_name=AXIS_NAME)
    return create_state(config, generator, discriminator)


def device_sharding(devices) -> jax.sharding.NamedSharding:
    """Leading axis split over `devices`, as pmap takes and returns its arguments.

    The mesh axis is named like the pmap axis: pmap's outputs carry this sharding, so inputs
    placed the same way never trigger a second compilation.
    """
    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS_NAME,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))


def replicate(tree, devices):
    """One copy of `tree` per device, stacked on a leading axis, as pmap expects."""
    sharding = device_sharding(devices)
    stack = lambda x: np.stack([np.asarray(x)] * len(devices))
    return jax.device_put(jax.tree_util.tree_map(stack, tree), sharding)


def prefetch_to_devices(batches, devices, size: int = 2):
    """Places (devices, per_device, ...) host batches on the devices, `size` ahead."""
    sharding = device_sharding(devices)
    queue = collections.deque()
    for batch in batches:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) > size:
            yield queue.popleft()
    yield from queue


def unreplicate(state: GANState) -> GANState:
    """The first device's copy of a replicated state (all copies are equal)."""
    return jax.tree_util.tree_map(lambda x: x[0], state)


def summarize_metrics(history: list[dict]) -> dict[str, float]:
    """Means over the steps since the last log of on-device per-step metrics."""
    history = jax.device_get(history)
    return {k: float(np.mean([m[k][0] for m in history])) for k in history[0]}


def check_finite(metrics: dict[str, float], step: int) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite metrics at step {step}: {bad}. Training stopped; the last "
            "checkpoint was written before this step and is intact. Try a lower "
            "--config.learning_rate or another --config.seed."
        )


def progress_line(
    step: int, total: int, metrics: dict[str, float], images_per_s: float, batch_size: int
) -> str:
    """One console line: step, losses, D outputs, throughput and time left."""
    remaining_s = (total - step) * batch_size / max(images_per_s, 1e-9)
    eta = time.strftime("%H:%M:%S", time.gmtime(remaining_s))
    return (
        f"step {step}/{total} | d_loss {metrics['d_loss']:.4f} g_loss {metrics['g_loss']:.4f} "
        f"D(x) {metrics['D(x)']:.3f} D(G(z)) {metrics['D(G(z))']:.3f} | "
        f"{images_per_s:.1f} images/s | ETA {eta}"
    )


class SummaryWriter:
    """TensorBoard scalars and images in `workdir` (TensorFlow is imported only here)."""

    def __init__(self, workdir: str):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(workdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        with self._writer.as_default():
            for name, value in values.items():
                self._tf.summary.scalar(name, value, step=step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        with self._writer.as_default():
            self._tf.summary.image(name, image[None], step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def write_sample_grid(state: GANState, workdir: str, step: int, writer: SummaryWriter) -> str:
    """Generates the fixed-noise sample grid, saves it as a PNG and a TensorBoard image."""
    images = sampling.generate_eval(state.generator, state.fixed_noise)
    grid = sampling.make_grid(images)
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    sampling.save_png(grid, path)
    writer.image(step, "samples", grid)
    return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> GANState:
    """Trains (or resumes training) until `config.num_train_steps`; returns the final state.

    Writes checkpoints to workdir/checkpoints, sample grids to workdir/samples and
    TensorBoard events to workdir. Raises UserError for input the user must fix.
    """
    devices = jax.local_devices()
    validate_config(config, len(devices), jax.process_count())
    check_workdir_writable(workdir)

    from dcgan_jax import input_pipeline  # TensorFlow is only needed from here on

    # Loading (or failing to load) the data comes before any checkpoint is touched.
    source = input_pipeline.source_images(config)

    manager = checkpointing.make_manager(workdir, config.max_checkpoints)
    latest = manager.latest_step()  # may be 0: weights converted from PyTorch
    start_step = latest or 0
    if latest is not None:
        checkpointing.check_compatible(
            checkpointing.saved_config(manager, start_step), config, manager.directory
        )

    dataset = input_pipeline.create_dataset(config, len(devices), start_step, source)

    state = init_state(config)
    if latest is not None:
        state = checkpointing.restore_state(manager, start_step, state)
        print(f"Resumed from checkpoint at step {start_step} ({manager.directory}).", flush=True)
    else:
        print(f"No checkpoint in {manager.directory}; starting from step 0.", flush=True)

    writer = SummaryWriter(workdir)
    p_train_step = make_p_train_step(devices)
    replicated = replicate(state, devices)
    batches = prefetch_to_devices(dataset.as_numpy_iterator(), devices)

    history = []
    window_start = time.perf_counter()
    window_steps = 0
    step = start_step
    first_step_started = time.perf_counter()
    try:
        while step < config.num_train_steps:
            replicated, metrics = p_train_step(replicated, next(batches))
            history.append(metrics)
            step += 1
            window_steps += 1
            if step == start_step + 1:
                jax.block_until_ready(metrics)
                print(
                    f"First step (compilation included) took "
                    f"{time.perf_counter() - first_step_started:.1f} s.",
                    flush=True,
                )
                window_start, window_steps, history = time.perf_counter(), 0, []
            is_last = step == config.num_train_steps
            if history and (step % config.log_every_steps == 0 or is_last):
                summary = summarize_metrics(history)
                check_finite(summary, step)
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * config.batch_size / elapsed
                print(
                    progress_line(
                        step, config.num_train_steps, summary, images_per_s, config.batch_size
                    ),
                    flush=True,
                )
                rates = {"steps_per_s": window_steps / elapsed, "images_per_s": images_per_s}
                writer.scalars(step, {**summary, **rates})
                history, window_steps, window_start = [], 0, time.perf_counter()
            if step % config.sample_every_steps == 0 or is_last:
                write_sample_grid(unreplicate(replicated), workdir, step, writer)
            if step % config.checkpoint_every_steps == 0 or is_last:
                checkpointing.save(manager, unreplicate(replicated), config)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    return jax.device_get(unreplicate(replicated))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and TFDS log every file operation at INFO; progress is printed instead.
        logging.set_verbosity(logging.WARNING)
    with exit_on_user_error(FloatingPointError):
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


def define_flags() -> None:
    """--config (an ml_collections config file, fields overridable) and --workdir."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Training config file, e.g. configs/cifar.py.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and TensorBoard logs.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
