"""Orbax checkpoints of the GANState, with the config that wrote them.

Each checkpoint holds the full state (both networks, optimiser moments, BatchNorm
statistics, PRNG key, sample noise) and the config as JSON. A run refuses to resume from
a checkpoint whose config describes a different model or data stream, rather than
overwrite it.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dcgan_jax import default_config
from dcgan_jax.validation import UserError

# Fields that fix the shapes of the state or the order of the data stream: a run with
# other values cannot continue from the checkpoint. Others (num_train_steps, logging
# frequencies, learning_rate, ...) may change between runs.
MUST_MATCH_ON_RESUME = (
    "dataset",
    "crop_size",
    "image_size",
    "channels",
    "z_dim",
    "g_features",
    "d_features",
    "d_head",
    "batch_size",
    "seed",
    "num_samples",
)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """A CheckpointManager for `workdir/checkpoints` keeping the newest `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=("state", "config")
    )


def save(manager: ocp.CheckpointManager, state, config: ml_collections.ConfigDict) -> None:
    """Saves an unreplicated state (asynchronously) at its step."""
    state = jax.device_get(state)
    manager.save(
        int(state.step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())
        ),
    )


def saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The config stored with checkpoint `step`."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:
        raise UserError(
            f"checkpoint {step} in {manager.directory} is unreadable ({type(e).__name__}). "
            "Fix: move the damaged step directory aside, or use a new --workdir."
        ) from e
    return ml_collections.ConfigDict(restored["config"])


def check_compatible(saved: ml_collections.ConfigDict, config, directory) -> None:
    """Raises UserError if `config` cannot continue from a checkpoint written with `saved`."""
    # A field added after the checkpoint was written had its default value then.
    defaults = default_config.get_config()
    diffs = [
        f"{key}: checkpoint {saved.get(key, defaults[key])!r} vs now {config.get(key)!r}"
        for key in MUST_MATCH_ON_RESUME
        if saved.get(key, defaults[key]) != config.get(key)
    ]
    if diffs:
        raise UserError(
            f"the checkpoints in {directory} were written by a different config ("
            + "; ".join(diffs)
            + "). Fix: use a new --workdir for this config, or pass the original values "
            "to continue that run. Nothing was overwritten."
        )


def restore_state(manager: ocp.CheckpointManager, step: int, template):
    """Restores the state saved at `step` into the structure of `template` (host arrays)."""
    target = jax.tree_util.tree_map(np.asarray, jax.device_get(template))
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
    except Exception as e:
        raise UserError(
            f"checkpoint {step} in {manager.directory} does not fit this model or is damaged "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "Fix: use a new --workdir, or the config that wrote it."
        ) from e
    return restored["state"]


def load_latest(workdir: str, step: int | None = None):
    """(config, state) from the newest (or the given) checkpoint in `workdir`.

    The config is the one stored with the checkpoint, so no config file is needed.
    """
    from dcgan_jax import models
    from dcgan_jax.state import create_state

    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise UserError(
            f"no checkpoints in {directory}. Fix: pass the --workdir of a training run "
            "(or convert PyTorch weights into one with python -m dcgan_jax.convert)."
        )
    manager = make_manager(workdir)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise UserError(
            f"no checkpoint {'at step ' + str(step) if step is not None else ''} in {directory}"
            f" (found steps {list(manager.all_steps())}). Fix: pass an existing step or workdir."
        )
    config = saved_config(manager, step)
    generator, discriminator = models.make_models(config)
    state = restore_state(manager, step, create_state(config, generator, discriminator))
    manager.close()
    return config, state
