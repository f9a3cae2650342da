"""Training loop: `train_and_evaluate(config, workdir)`, and the `python -m` entry point.

    python -m dcgan_jax.train --config configs/cifar.py --workdir runs/cifar \
        [--config.batch_size=128 ...]
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below, which a restart would do twice (1.3-1.6 s).
    from dcgan_jax import allocator

    allocator.reexec_with_tunables()

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from dcgan_jax import (
    allocator,
    checkpointing,
    distributed,
    guards,
    models,
    report,
    sampling,
    steps,
    xla_flags,
)
from dcgan_jax.state import (
    GANState,
    TrainState,
    abstract_state,
    create_state,
    forget_compiled_initialisations,
)
from dcgan_jax.validation import (
    UserError,
    check_workdir_writable,
    describe_error,
    exit_on_user_error,
    validate_config,
)

AXIS_NAME = "batch"


class StepChanges(NamedTuple):
    """What one training step changes in a GANState; the rest passes through as it was."""

    generator: TrainState
    discriminator: TrainState
    ema_params: Any  # None while the EMA is off


def _step_changes(state, real, update_ema: bool, ema_warmup: bool):
    state, metrics = steps.train_step(state, real, AXIS_NAME, update_ema, ema_warmup)
    ema_params = state.ema_params if update_ema else None
    return StepChanges(state.generator, state.discriminator, ema_params), metrics


@functools.cache
def _pmapped_step_changes(devices: tuple | None, update_ema: bool, ema_warmup: bool):
    """`_step_changes` pmapped over `devices`: one per process for each (devices, flags), so
    that runs in one process (a notebook, the tests) trace and compile their step once per
    model (states of equal models and settings have equal structures, see state.py)."""
    return jax.pmap(
        functools.partial(_step_changes, update_ema=update_ema, ema_warmup=ema_warmup),
        axis_name=AXIS_NAME,
        devices=devices,
    )


class TrainStep:
    """`steps.train_step` data-parallel over `devices` (default: all devices of all
    processes; each process passes the arrays of its own devices):
    `train_step(state, batch) -> (state, metrics)`.

    The compiled program returns only what a step changes (both networks, and the EMA
    while it is kept) and takes nothing donated. On XLA:CPU that is faster than donating
    the state: to update a donated buffer in place, XLA copied G's parameters and Adam
    moments aside first (every step 147 MiB for cifar, 73 MiB for celeba, in and out of
    memory), and a donated state has to return what passes through unchanged, copied
    too. Measured in one process, alternating windows, 2-core AMD EPYC: step 1.03x
    (cifar and celeba), the compiled step's memory 444 -> 400 MiB (cifar), 494 -> 484
    MiB (celeba), bitwise the same state. The parts that pass through (the key, the fixed
    noise, an EMA that is off) are the caller's arrays, not copies.
    """

    def __init__(self, devices=None, update_ema: bool = False, ema_warmup: bool = False):
        devices = tuple(devices) if devices is not None and jax.process_count() == 1 else None
        self._changes = _pmapped_step_changes(devices, update_ema, ema_warmup)
        self._compiled = None
        self._compiled_for = None  # the arguments' shapes, dtypes and shardings
        self._compiling = None  # a Future: the compilation `start_compiling` began

    def start_compiling(self, state: GANState, batch) -> None:
        """Compiles the step ahead of time for the shapes of `state` and `batch` (arrays, or
        `jax.ShapeDtypeStruct`s with shardings: `abstract_step_arguments`): traced here,
        compiled by XLA in a background thread (seconds on a CPU) while the caller
        initialises or restores the state and builds the input pipeline. The first call
        waits for it; where the compilation failed (a warning) or was for arguments unlike
        the call's, the call compiles on its own. One process only: a compiled pmap skips
        the conversion between host-local and global arrays that several processes need
        (the training loop there compiles on the first call)."""
        future = concurrent.futures.Future()
        self._compiled, self._compiling = None, future
        try:
            self._compiled_for = signature = _signature((state, batch))
            key = (self._changes, signature)
            with _COMPILED_STEPS_LOCK:
                compiled = _COMPILED_STEPS.get(key)
            if compiled is not None:
                future.set_result(compiled)
                return
            lowered = self._changes.lower(state, batch)
        except Exception as e:  # handed to the first call, which compiles on its own
            future.set_exception(e)
            return

        def compile_step():
            try:
                compiled = lowered.compile()
            except BaseException as e:  # handed to the first call, as above
                future.set_exception(e)
                return
            future.set_result(compiled)
            with _COMPILED_STEPS_LOCK:
                _COMPILED_STEPS[key] = compiled
                while len(_COMPILED_STEPS) > _COMPILED_STEPS_KEPT:
                    _COMPILED_STEPS.pop(next(iter(_COMPILED_STEPS)))

        # Not a daemon: the interpreter waits for it before tearing down JAX's backends.
        threading.Thread(target=compile_step, name="compile-train-step").start()

    @property
    def compiled(self):
        """The executable the calls use, once a call has taken the one compiled ahead of
        time (else None; the benchmark reads its memory footprint)."""
        return self._compiled

    def __call__(self, state: GANState, batch) -> tuple[GANState, dict]:
        if self._compiling is not None:
            compiling, self._compiling = self._compiling, None
            try:
                compiled = compiling.result()
            except Exception as e:  # a real error recurs below, from the call's compilation
                report.warning(
                    f"compiling the training step ahead of time failed "
                    f"({type(e).__name__}: {e}); compiling it on its first call instead."
                )
                compiled = None
            if _signature((state, batch)) == self._compiled_for:
                self._compiled = compiled
        step = self._changes if self._compiled is None else self._compiled
        changes, metrics = step(state, batch)
        ema_params = state.ema_params if changes.ema_params is None else changes.ema_params
        state = state.replace(
            generator=changes.generator,
            discriminator=changes.discriminator,
            ema_params=ema_params,
        )
        return state, metrics


# Compiled steps by (pmapped function, arguments' signature): runs in one process (the tests,
# a notebook) compile a step once per model, as pmap's own cache does for its calls. A few
# only: each holds its executable.
_COMPILED_STEPS: dict = {}
_COMPILED_STEPS_KEPT = 8
_COMPILED_STEPS_LOCK = threading.Lock()  # compilations end in their own threads


def forget_compiled_programs() -> None:
    """Drops every program compiled in this process: JAX's caches, and the steps and
    initialisations kept here for later runs (which `jax.clear_caches()` alone leaves: a
    step started afterwards would take its executable from `_COMPILED_STEPS`). For a cold
    start, memory back, or a model whose formulation was changed in the process."""
    jax.clear_caches()
    with _COMPILED_STEPS_LOCK:
        _COMPILED_STEPS.clear()
    forget_compiled_initialisations()


def _signature(tree) -> tuple:
    """What a compiled step must match: the tree, and each array's (or
    `jax.ShapeDtypeStruct`'s) shape, dtype, sharding and weak type."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(
        (x.shape, np.dtype(x.dtype), getattr(x, "sharding", None), getattr(x, "weak_type", False))
        for x in leaves
    )


def abstract_step_arguments(config, devices) -> tuple[GANState, jax.ShapeDtypeStruct]:
    """The shapes, dtypes and shardings of what `TrainStep` is called with for `config` on
    `devices` (one process): a fresh state, `replicate`d, and a batch of
    `prefetch_to_devices`. No computation: the initialisation is traced, not run (and
    its trace is kept for `init_state`)."""
    state = abstract_state(config, *models.make_models(config, axis_name=AXIS_NAME))
    sharding = device_sharding(devices)
    stacked = lambda shape, dtype: jax.ShapeDtypeStruct(
        (len(devices), *shape), dtype, sharding=sharding
    )
    per_device = config.batch_size // len(devices)
    image = (config.image_size, config.image_size, config.channels)
    return (
        jax.tree_util.tree_map(lambda x: stacked(x.shape, x.dtype), state),
        stacked((per_device, *image), np.float32),
    )


def make_p_train_step(devices=None, update_ema: bool = False, ema_warmup: bool = False):
    """The data-parallel training step (see `TrainStep`)."""
    return TrainStep(devices, update_ema, ema_warmup)


def train_step_for(config, devices) -> TrainStep:
    """The training step of `config` (its EMA generator updated and warmed up as it says),
    as training, the benchmark and the step profile run it."""
    return make_p_train_step(devices, config.ema_decay > 0, config.ema_warmup)


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


def _first_local_copy(x):
    if isinstance(x, jax.Array):  # also when other processes hold the other copies
        return np.asarray(x.addressable_data(0))[0]
    return np.asarray(x)[0]


def unreplicate(state: GANState) -> GANState:
    """This process's first device's copy of a replicated state, on the host (all copies
    are equal)."""
    return jax.tree_util.tree_map(_first_local_copy, state)


def summarize_metrics(history: list[dict]) -> dict[str, float]:
    """Means over the steps since the last log of on-device per-step metrics (pmean'd, so
    every device holds the same values).

    The first local device's values of all steps are averaged on that device and copied to
    the host once, instead of one small copy (and sync) per step and metric."""
    names = list(history[0])
    first = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else np.asarray(x)
    columns = [jnp.stack([first(m[k]) for m in history]) for k in names]
    means = np.asarray(jnp.stack([c.astype(jnp.float32).mean() for c in columns]))
    return {k: float(v) for k, v in zip(names, means, strict=True)}


def check_finite_metrics(metrics: dict[str, float], step: int, last_saved: int | None) -> None:
    """Raises FloatingPointError if a logged metric is NaN or infinite."""
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(_non_finite_message(f"metrics {bad}", step, last_saved))


def check_finite_state(state: GANState, step: int, last_saved: int | None) -> None:
    """Raises FloatingPointError if any parameter, moment or statistic is NaN or infinite."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
            where = jax.tree_util.keystr(path)
            raise FloatingPointError(_non_finite_message(f"values in {where}", step, last_saved))


def _non_finite_message(what: str, step: int, last_saved: int | None) -> str:
    kept = (
        f"the newest checkpoint (step {last_saved}) is intact and nothing non-finite was saved"
        if last_saved is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"non-finite {what} at step {step}. Training stopped; {kept}. Fix: rerun with a "
        "lower --config.learning_rate (it resumes from that checkpoint), or start over with "
        "another --config.seed in a new --workdir."
    )


def progress_line(
    step: int, total: int, metrics: dict[str, float], images_per_s: float | None, batch_size: int
) -> str:
    """One console line: step, losses, D outputs, throughput and time left."""
    line = (
        f"step {step}/{total} | d_loss {metrics['d_loss']:.4f} g_loss {metrics['g_loss']:.4f} "
        f"D(x) {metrics['D(x)']:.3f} D(G(z)) {metrics['D(G(z))']:.3f}"
    )
    if images_per_s is None:  # only the compilation step since the last line
        return line
    remaining_s = (total - step) * batch_size / max(images_per_s, 1e-9)
    eta = time.strftime("%H:%M:%S", time.gmtime(remaining_s))
    return f"{line} | {images_per_s:.1f} images/s | ETA {eta}"


def make_writer(workdir: str, config: ml_collections.ConfigDict):
    """TensorBoard events in `workdir` (flax.metrics.tensorboard) on process 0, with the
    config recorded as hyper-parameters; None on the other processes."""
    if not is_primary():
        return None
    from flax.metrics import tensorboard  # imports TensorFlow

    writer = tensorboard.SummaryWriter(workdir, auto_flush=False)
    writer.hparams(
        {
            key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in config.items()
        }
    )
    return writer


def write_scalars(writer, step: int, values: dict[str, float]) -> None:
    if writer is not None:
        for name, value in values.items():
            writer.scalar(name, value, step)
        writer.flush()


def write_sample_grid(state: GANState, config, workdir: str, step: int, writer) -> str:
    """Generates the fixed-noise sample grid, saves it as a PNG and a TensorBoard image."""
    batch_statistics = sampling.batch_statistics(config)
    generator = sampling.sampling_generator(state, config)
    images = sampling.generate_eval(generator, state.fixed_noise, None, batch_statistics)
    grid = sampling.make_grid(images)
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    try:
        sampling.save_png(sampling.enlarge(grid), path)  # TensorBoard zooms by itself
    except OSError as e:
        raise UserError(
            f"could not write the sample grid {path} ({e.strerror or e}). Fix: free disk "
            "space or restore write access to the workdir; rerunning resumes from the newest "
            "checkpoint."
        ) from e
    if writer is not None:
        writer.image("samples", grid, step)
        writer.flush()
    return path


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_samples: Callable[[int, str], None] | None = None,
) -> GANState:
    """Trains (or resumes training) until `config.num_train_steps`; returns the final state.

    Writes checkpoints to workdir/checkpoints, sample grids to workdir/samples and
    TensorBoard events to workdir; `on_samples(step, png_path)`, if given, is called after
    each grid is written (a notebook shows them with it). Raises UserError for input the
    user must fix, FloatingPointError when training diverges, and guards.TrainingInterrupted
    after saving a checkpoint on SIGTERM/SIGINT.
    """
    started = time.perf_counter()
    devices = jax.local_devices()
    validate_config(config, len(devices), jax.process_count())
    check_workdir_writable(workdir)
    # Process 0 speaks for a multi-process run: it holds the lock, logs and writes samples.
    with guards.WorkdirLock(workdir) if is_primary() else contextlib.nullcontext():
        return _resume_and_train(config, workdir, devices, on_samples, started)


def is_primary() -> bool:
    return jax.process_index() == 0


def is_time(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic action (logging, samples, evaluation, checkpoints) runs after
    `step`: every `every` steps, and always after the last one."""
    return step % every == 0 or step == last_step


def _agreed_stop(stop: guards.GracefulStop, step: int, config) -> bool:
    """Whether to stop after `step`. With several processes, a signal seen by any of them
    stops all of them, at the next log step, so that all save the same step."""
    if jax.process_count() == 1:
        return stop.requested
    if not is_time(step, config.log_every_steps, config.num_train_steps):
        return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the training loop works with besides the state."""

    config: ml_collections.ConfigDict
    workdir: str
    devices: list
    manager: object  # the Orbax CheckpointManager
    writer: object  # flax.metrics.tensorboard.SummaryWriter on process 0, None elsewhere
    dataset: object  # the tf.data pipeline of this process's batches
    train_step: TrainStep
    stop: guards.GracefulStop
    on_samples: Callable[[int, str], None] | None
    started: float  # time.perf_counter() when `train_and_evaluate` began


def _resume_and_train(config, workdir: str, devices, on_samples, started: float) -> GANState:
    """Resumes from the newest usable checkpoint (or starts), trains, and saves."""
    from dcgan_jax import input_pipeline  # TensorFlow is only needed from here on

    # Loading (or failing to load) the data comes before any checkpoint is touched.
    source = input_pipeline.source_images(config)

    manager = checkpointing.make_manager(workdir, config.max_checkpoints)
    writer = None
    try:
        train_step = train_step_for(config, devices)
        if jax.process_count() == 1:
            # The step compiles (most of the time to the first step) while the state is
            # initialised or restored and the input pipeline is built.
            train_step.start_compiling(*abstract_step_arguments(config, devices))
        fresh = init_state(config)
        # May be step 0: weights converted from PyTorch.
        start_step, state = checkpointing.restore_newest_usable(manager, config, fresh, workdir)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.assert_equal(
                np.int64(-1 if start_step is None else start_step),
                "the processes found different checkpoints to resume from; is the workdir "
                "on a file system that all of them share?",
            )
        if start_step is None:
            start_step, state = 0, fresh
            report.info(f"No checkpoint in {manager.directory}; starting from step 0.")
        else:
            report.info(f"Resumed from checkpoint at step {start_step} ({manager.directory}).")
            state = state.with_ema_decay(config.ema_decay)  # ema_decay may change on resume
        dataset = input_pipeline.create_dataset(config, len(devices), start_step, source)
        writer = make_writer(workdir, config)
        with guards.GracefulStop() as stop:
            run = _Run(
                config,
                workdir,
                devices,
                manager,
                writer,
                dataset,
                train_step,
                stop,
                on_samples,
                started,
            )
            state = _train_loop(run, state)
        checkpointing.finish_writes(manager)
        if int(state.step) < config.num_train_steps:
            cause = stop.signal_name or "a signal to another process of this run"
            raise guards.TrainingInterrupted(
                f"Stopped by {cause} after step {int(state.step)}; its checkpoint is "
                f"in {manager.directory}. Run the same command again to resume.",
                stop.signum or signal.SIGTERM,
            )
        return state
    finally:
        try:
            manager.wait_until_finished()
        except Exception:  # reported by finish_writes; an error here must not mask another
            pass
        manager.close()
        if writer is not None:
            writer.close()


def _train_loop(run: _Run, state: GANState) -> GANState:
    """Steps until num_train_steps or a stop request; logs, samples and checkpoints."""
    config, workdir, devices, manager, writer = (
        run.config,
        run.workdir,
        run.devices,
        run.manager,
        run.writer,
    )
    start_step = step = int(state.step)
    last_saved = start_step if manager.latest_step() is not None else None
    p_train_step = run.train_step
    replicated = replicate(state, devices)
    batches = prefetch_to_devices(run.dataset.as_numpy_iterator(), devices)

    evaluator = None
    if config.eval_every_steps:
        if jax.process_count() == 1:
            from dcgan_jax import evaluate

            evaluator = evaluate.TrainingEvaluator(config, workdir)
        else:
            report.warning(
                "evaluation during multi-process training is not supported; run "
                "python -m dcgan_jax.evaluate on the workdir instead."
            )

    history = []  # on-device metrics since the last log line
    window_start, window_steps = time.perf_counter(), 0  # timing excludes compilation
    stopping = False
    while step < config.num_train_steps and not stopping:
        replicated, metrics = p_train_step(replicated, next(batches))
        history.append(metrics)
        step += 1
        if step == start_step + 1:
            jax.block_until_ready(metrics)
            report.info(
                f"First step done {time.perf_counter() - run.started:.1f} s after the "
                "training began (loading the data, compilation, initialisation and the first "
                "batch included)."
            )
            window_start = time.perf_counter()
        else:
            window_steps += 1
        if config.check_finite_every_step:
            check_finite_metrics(summarize_metrics([metrics]), step, last_saved)
        last = config.num_train_steps
        if is_time(step, config.log_every_steps, last):
            summary = summarize_metrics(history)
            check_finite_metrics(summary, step, last_saved)
            elapsed = time.perf_counter() - window_start
            images_per_s = window_steps * config.batch_size / elapsed if window_steps else None
            report.info(
                progress_line(
                    step, config.num_train_steps, summary, images_per_s, config.batch_size
                )
            )
            rates = (
                {"steps_per_s": window_steps / elapsed, "images_per_s": images_per_s}
                if images_per_s
                else {}
            )
            write_scalars(writer, step, {**summary, **rates})
            history, window_steps, window_start = [], 0, time.perf_counter()
        stopping = _agreed_stop(run.stop, step, config)
        sample_now = is_time(step, config.sample_every_steps, last) and is_primary()
        eval_now = evaluator is not None and is_time(step, config.eval_every_steps, last)
        save_now = is_time(step, config.checkpoint_every_steps, last) or stopping
        if not (sample_now or eval_now or save_now):
            continue
        host_state = unreplicate(replicated)  # one device-to-host copy for all three
        if sample_now:
            path = write_sample_grid(host_state, config, workdir, step, writer)
            if run.on_samples is not None:
                run.on_samples(step, path)
        if eval_now:
            results = evaluator(host_state)
            if results is not None:
                names = ("fid", "inception_score", "kid")
                write_scalars(writer, step, {f"eval/{name}": results[name] for name in names})
        if save_now:
            check_finite_state(host_state, step, last_saved)
            checkpointing.save(manager, host_state, config)
            last_saved = step
    return unreplicate(replicated)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_flags.apply_defaults()
    allocator.dispatch_in_calling_thread()
    f = flags.FLAGS
    if f.compilation_cache and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        # Reruns and resumes reuse compiled programs instead of compiling them again.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(f.compilation_cache))
    with exit_on_user_error(FloatingPointError):
        distributed.initialize(
            f.distributed, f.coordinator_address, f.num_processes, f.process_id, f.heartbeat_s
        )
        try:
            train_and_evaluate(f.config, f.workdir)
        except guards.TrainingInterrupted as e:
            print(str(e), file=sys.stderr)
            sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1:
                raise
            print(
                f"error: process {jax.process_index()}: a collective operation with the other "
                f"processes failed ({describe_error(e, 300)}); another process of this "
                "run has probably died or been killed. Fix: restart all processes with the "
                "same command; they resume from the newest checkpoint.",
                file=sys.stderr,
                flush=True,
            )
            # Skip jax.distributed's shutdown barrier: the dead process would never join it.
            sys.stdout.flush()
            os._exit(2)


def define_flags() -> None:
    """--config (an ml_collections config file, fields overridable), --workdir, and the
    multi-process flags."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Training config file, e.g. configs/cifar.py.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and TensorBoard logs.")
    flags.mark_flags_as_required(["config", "workdir"])
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "Join a multi-process run via jax.distributed: auto = when --coordinator_address is "
        "given or SLURM / Open MPI / a TPU pod slice is detected.",
    )
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
    flags.DEFINE_integer(
        "num_processes", None, "Processes in the run (with --coordinator_address)."
    )
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
    flags.DEFINE_string(
        "compilation_cache",
        "~/.cache/dcgan_jax/jax_cache",
        "Directory of JAX's persistent compilation cache ('' turns it off; "
        "JAX_COMPILATION_CACHE_DIR takes precedence).",
    )
    flags.DEFINE_integer(
        "heartbeat_s", 100, "Seconds without heartbeats after which a process counts as dead."
    )


if __name__ == "__main__":
    define_flags()
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
