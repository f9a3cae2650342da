"""Orbax checkpoints of the GANState, with the config that wrote them.

Each checkpoint holds the full state (both networks, optimiser moments, BatchNorm
statistics, PRNG key, sample noise), the config as JSON and a digest of the state's bytes.
Orbax writes a step into a temporary directory and renames it when complete, so a process
killed mid-write leaves no step behind (and the temporary directory is removed on the next
start). A complete step whose files were damaged afterwards fails its digest and is moved
aside to `checkpoints_damaged/`; the run resumes from the newest step that passes. A run
refuses to resume from a checkpoint whose config describes a different model or data
stream, rather than overwrite it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dcgan_jax import default_config, report
from dcgan_jax.validation import UserError, describe_error, effective_epoch_order

ITEMS = ("state", "config", "integrity")

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
    # The data stream: another buffer or sharding gives another order after resuming.
    "shuffle_buffer_size",
    "input_sharding",
    "epoch_order",
)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def damaged_dir(workdir: str) -> str:
    """Where damaged steps are moved, out of Orbax's way but kept for inspection."""
    return os.path.join(os.path.abspath(workdir), "checkpoints_damaged")


def state_digest(state) -> str:
    """BLAKE2b of every leaf's path, dtype, shape and bytes: equal iff the states are."""
    digest = hashlib.blake2b(digest_size=32)
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state)):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def make_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """A CheckpointManager for `workdir/checkpoints` keeping the newest `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def _write_error(manager, e: Exception, step: int | None = None) -> UserError:
    kept = list(manager.all_steps())
    what = f"checkpoint {step}" if step is not None else "a checkpoint"
    cause = describe_error(e)
    if jax.process_count() > 1 and not isinstance(e, OSError):
        return UserError(
            f"process {jax.process_index()} could not write {what} to {manager.directory} "
            f"({cause}); all processes write together, and another process of this run has "
            f"probably died or been killed. The checkpoints already there (steps {kept}) are "
            "intact. Fix: restart all processes with the same command; they resume from the "
            "newest of them."
        )
    return UserError(
        f"could not write {what} to {manager.directory} ({cause}). The checkpoints already "
        f"there (steps {kept}) are intact. Fix: {_write_fix(e)}, then rerun the same command "
        "to resume from the newest of them."
    )


def _error_chain(error: BaseException | None):
    """`error` and the exceptions behind it (its cause, or else its context), in order."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _write_fix(error: BaseException) -> str:
    """What to do about a failed write, from the OS error behind it (if any)."""
    codes = {e.errno for e in _error_chain(error) if isinstance(e, OSError) and e.errno is not None}
    if codes & {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}:
        return "free disk space (or raise the quota) where the workdir is"
    if codes & {errno.EACCES, errno.EPERM, errno.EROFS}:
        return "restore write access to the workdir (permissions, or a read-only mount)"
    if codes:
        return "check the disk and its mount (the operating system refused the write)"
    return "check the disk, its free space and its permissions"


def save(manager: ocp.CheckpointManager, state, config: ml_collections.ConfigDict) -> None:
    """Saves an unreplicated state (asynchronously) at its step.

    Raises UserError when the write fails (disk full, directory unwritable); errors of the
    previous asynchronous save surface here too.
    """
    state = jax.device_get(state)
    step = int(state.step)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config.to_dict()),
                integrity=ocp.args.JsonSave({"blake2b": state_digest(state), "step": step}),
            ),
        )
    except Exception as e:
        raise _write_error(manager, e, step) from e


def finish_writes(manager: ocp.CheckpointManager) -> None:
    """Waits for the asynchronous save in flight; UserError if it failed."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise _write_error(manager, e) from e


class CheckpointReadError(UserError):
    """The operating system or machine failed while a checkpoint was read (EIO, EACCES,
    ENOMEM, a vanished network mount): not evidence of damage, so nothing is moved."""


class DamagedCheckpointError(UserError):
    """A checkpoint step that cannot be restored: unreadable, not of this model, or not
    matching its digest. `reason` says what is wrong; `fix`, the advice the message ends
    with, is for when no other step is usable: where training falls back to an older step,
    its warning gives the reason alone."""

    def __init__(self, reason: str, fix: str | None = None):
        self.reason, self.fix = reason, fix
        super().__init__(f"{reason}." + (f" Fix: {fix}" if fix else ""))


# errno values that say the file system or the machine failed, not the checkpoint's bytes.
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO",
        "EACCES",
        "EPERM",
        "ENOMEM",
        "ESTALE",
        "ENOTCONN",
        "ETIMEDOUT",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
        "EAGAIN",
        "EBUSY",
        "ENODEV",
        "ENXIO",
        "EMFILE",
        "ENFILE",
        "EINTR",
    )
    if hasattr(errno, name)
)


def _environment_error(error: BaseException | None) -> BaseException | None:
    """The operating-system error (or MemoryError) behind `error`, following its causes."""
    for e in _error_chain(error):
        if isinstance(e, MemoryError) or (
            isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS
        ):
            return e
    return None


def _raise_if_environment_error(error: BaseException, manager, step: int) -> None:
    cause = _environment_error(error)
    if cause is not None:
        raise CheckpointReadError(
            f"checkpoint {step} in {manager.directory} could not be read "
            f"({describe_error(cause)}). That is an error of the file system or the machine, "
            "not damage: nothing was moved. Fix: check the disk, its mount and its "
            "permissions (and free memory), then run the same command again."
        ) from error


def saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The config stored with checkpoint `step`."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:
        _raise_if_environment_error(e, manager, step)
        raise DamagedCheckpointError(
            f"checkpoint {step} in {manager.directory} is unreadable ({type(e).__name__})",
            "move the damaged step directory aside, or use a new --workdir.",
        ) from e
    return default_config.upgrade_legacy_fields(ml_collections.ConfigDict(restored["config"]))


def check_compatible(saved: ml_collections.ConfigDict, config, directory) -> None:
    """Raises UserError if `config` cannot continue from a checkpoint written with `saved`."""
    # A field added after the checkpoint was written had its default value then.
    defaults = default_config.get_config()

    def value(c, key):
        if key == "epoch_order":  # TFDS datasets have one order whatever the field says
            return effective_epoch_order(c)
        return c.get(key, defaults[key])

    diffs = [
        f"{key}: checkpoint {value(saved, key)!r} vs now {value(config, key)!r}"
        for key in MUST_MATCH_ON_RESUME
        if value(saved, key) != value(config, key)
    ]
    if diffs:
        raise UserError(
            f"the checkpoints in {directory} were written by a different config ("
            + "; ".join(diffs)
            + "). Fix: use a new --workdir for this config, or pass the original values "
            "to continue that run. Nothing was overwritten."
        )


def _is_abandoned_read(unraisable) -> bool:
    """Whether an unraisable exception is one of the reads a failed Orbax restore left
    behind: each finishes after the restore's event loop has closed and reports
    RuntimeError("Event loop is closed") from asyncio's `call_soon_threadsafe`."""
    error, traceback = unraisable.exc_value, unraisable.exc_traceback
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        return False
    while traceback is not None:
        if traceback.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        traceback = traceback.tb_next
    return False


def _quiet_abandoned_reads() -> None:
    """Drops the abandoned reads' reports from now on (a damaged checkpoint printed ~100
    lines of such tracebacks around the one warning that matters); any other unraisable
    exception still goes to the hook in place before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable) -> None:
        if not _is_abandoned_read(unraisable):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook


def restore_state(manager: ocp.CheckpointManager, step: int, template):
    """Restores the state saved at `step` into the structure of `template` (host arrays).

    The state's digest must equal the one saved with it (checkpoints written before digests
    existed have none and are taken as they are).
    """
    target = jax.tree_util.tree_map(np.asarray, jax.device_get(template))
    has_digest = os.path.isdir(os.path.join(str(manager.directory), str(step), "integrity"))
    args = {"state": ocp.args.StandardRestore(target)}
    if has_digest:
        args["integrity"] = ocp.args.JsonRestore()
    # Before the restore: the reads it abandons if it fails may report as soon as its event
    # loop has closed, before the failure reaches the `except` below.
    _quiet_abandoned_reads()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:
        _raise_if_environment_error(e, manager, step)
        raise DamagedCheckpointError(
            f"checkpoint {step} in {manager.directory} does not fit this model or is damaged "
            f"({describe_error(e)})",
            "use a new --workdir, or the config that wrote it.",
        ) from e
    if has_digest and restored["integrity"]["blake2b"] != state_digest(restored["state"]):
        raise DamagedCheckpointError(
            f"checkpoint {step} in {manager.directory} is damaged: its contents do not match "
            "the digest saved with them"
        )
    return restored["state"]


def restore_newest_usable(manager: ocp.CheckpointManager, config, template, workdir: str):
    """(step, state) of the newest checkpoint that restores intact, or (None, None) if the
    workdir has no checkpoints.

    Damaged steps (unreadable, or failing their digest) are moved to
    `checkpoints_damaged/<step>-<time>` with a warning, so that training can write that
    step again. A checkpoint of a different config raises UserError (nothing is moved).
    If checkpoints exist but none is usable, raises UserError naming the directory: a run
    never silently starts from scratch over existing checkpoints.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None, None
    problems = []
    for step in steps:
        # A CheckpointReadError (the disk or machine failed) propagates: it is not damage.
        try:
            saved = saved_config(manager, step)
        except DamagedCheckpointError as e:
            problems.append((step, e))
            continue
        check_compatible(saved, config, manager.directory)  # a wrong config is not damage
        try:
            state = restore_state(manager, step, template)
        except DamagedCheckpointError as e:
            problems.append((step, e))
            continue
        if jax.process_index() == 0:  # one process moves; all see the result after the sync
            for bad_step, error in problems:
                moved = _move_aside(manager, bad_step, workdir)
                report.warning(
                    f"checkpoint {bad_step} is damaged; moved to {moved} ({error.reason})"
                )
        if problems:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("damaged checkpoints moved aside")
            manager.reload()
        return step, state
    raise UserError(
        f"no usable checkpoint in {manager.directory}: every step ({steps}) is damaged or "
        f"unreadable (first problem: {problems[0][1]}). Nothing was changed. Fix: restore the "
        "checkpoints from a backup, or move the directory away to start from scratch."
    )


def _move_aside(manager: ocp.CheckpointManager, step: int, workdir: str) -> str:
    destination = os.path.join(damaged_dir(workdir), f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(damaged_dir(workdir), exist_ok=True)
    shutil.move(os.path.join(str(manager.directory), str(step)), destination)
    return destination


def load_checkpoint(workdir: str, step: int | None = None):
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
    with make_manager(workdir) as manager:  # closed on every path, errors included
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise UserError(
                f"no checkpoint {'at step ' + str(step) if step is not None else ''} in "
                f"{directory} (found steps {list(manager.all_steps())}). Fix: pass an existing "
                "step or workdir."
            )
        config = saved_config(manager, step)
        generator, discriminator = models.make_models(config)
        state = restore_state(manager, step, create_state(config, generator, discriminator))
    return config, state
