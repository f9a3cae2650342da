"""Kills, signals, damaged checkpoints, divergence, full disks, concurrent runs, bad config."""

import errno
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from dcgan_jax import checkpointing, default_config, guards, input_pipeline, sampling, train
from dcgan_jax.validation import DATASETS, ConfigError, UserError, validate_config
from tests import commands, kill_loop
from tests.conftest import NUM_DEVICES, tiny_config

REPO = commands.REPO


def _steps(workdir) -> list[int]:
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")))


def _digest(state) -> str:
    return checkpointing.state_digest(state)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    # A reduced count for CI; `python -m tests.kill_loop --kills 20` is the full version.
    counts = kill_loop.run(kills=3, seed=0, root=str(tmp_path))
    assert counts["kills"] == 3  # run() itself asserts the bit-identical final state


def _start_training(workdir, num_steps, *extra):
    command = kill_loop.train_command(
        str(workdir), num_steps, *extra, checkpoint_every_steps=100_000
    )
    env = kill_loop._environment(os.path.join(os.path.dirname(str(workdir)), "xla_cache"))
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_line(process, prefix: str, timeout: float = 180.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix) or time.monotonic() > deadline:
            return lines
    raise AssertionError(f"the process ended without printing {prefix!r}: {lines}")


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    process = _start_training(workdir, 100_000)
    _wait_for_line(process, "First step")
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Received SIGTERM: stopping after this step" in stderr
    assert "Traceback" not in stderr
    stopped_at = int(stderr.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    assert 0 < stopped_at < 100_000
    assert _steps(workdir) == [stopped_at]  # checkpoint_every_steps was never reached

    config = tiny_config(num_train_steps=stopped_at + 2, sample_every_steps=1000)
    config.log_every_steps, config.num_samples = 25, 4
    resumed = train.train_and_evaluate(config, str(workdir))
    assert int(resumed.step) == stopped_at + 2


def test_second_signal_exits_at_once(tmp_path):
    script = (
        "import os, signal, time\n"
        "from dcgan_jax.guards import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.requested and stop.signal_name == 'SIGINT'\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "    print('not reached')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.stdout == "first signal noted\n"
    assert result.returncode == -signal.SIGINT  # ended by the signal itself
    assert "Second SIGINT: exiting now." in result.stderr


def _damage(step_dir, how: str) -> None:
    """Damages the state files of a complete checkpoint step."""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for name in names
    ]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "rb") as f:
        data = bytearray(f.read())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # flip bits in the middle, the kind of damage no file system reports
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
    with open(biggest, "wb") as f:
        f.write(bytes(data))


def test_only_the_abandoned_reads_are_dropped_from_unraisable_reports(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    checkpointing._quiet_abandoned_reads()
    checkpointing._quiet_abandoned_reads()  # installed once, not wrapped twice

    def call_soon_threadsafe(message):  # where asyncio raises it for a closed loop
        raise RuntimeError(message)

    def elsewhere(message):
        raise RuntimeError(message)

    errors = []
    for raiser, message in (
        (call_soon_threadsafe, "Event loop is closed"),
        (elsewhere, "Event loop is closed"),
        (call_soon_threadsafe, "something else"),
    ):
        try:
            raiser(message)
        except RuntimeError as error:
            errors.append(error)
            sys.unraisablehook(
                types.SimpleNamespace(
                    exc_type=RuntimeError,
                    exc_value=error,
                    exc_traceback=error.__traceback__,
                    err_msg=None,
                    object=None,
                )
            )
    assert [u.exc_value for u in reported] == errors[1:]


# A truncated file leaves Orbax's abandoned reads reporting "Event loop is closed" as they
# finish (a hundred lines of tracebacks around the one warning): they must not get out.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated", "bit_flipped"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how, capsys):
    straight = train.train_and_evaluate(tiny_config(num_train_steps=6), str(tmp_path / "straight"))

    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=4), str(workdir))
    assert _steps(workdir) == [2, 4]
    _damage(workdir / "checkpoints" / "4", how)
    resumed = train.train_and_evaluate(tiny_config(num_train_steps=6), str(workdir))
    output = capsys.readouterr().out
    assert "warning: checkpoint 4 is damaged; moved to" in output
    assert "Fix:" not in output  # nothing to fix: training goes on from step 2
    assert "Resumed from checkpoint at step 2" in output
    # The damaged step was kept aside, not deleted; training wrote steps 4..6 afresh.
    assert len(os.listdir(workdir / "checkpoints_damaged")) == 1
    assert _steps(workdir) == [4, 6]
    assert _digest(resumed) == _digest(straight)


@pytest.fixture(scope="module")
def four_step_workdir(tmp_path_factory):
    """A workdir trained to step 4 (checkpoints 2 and 4), to copy from."""
    workdir = tmp_path_factory.mktemp("four_steps") / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=4), str(workdir))
    return workdir


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),
        PermissionError(errno.EACCES, "Permission denied"),
        MemoryError("out of memory"),
        # As a library would report it: its own exception, caused by the OS error.
        ValueError("read failed"),
    ],
    ids=["EIO", "EACCES", "ENOMEM", "wrapped_ESTALE"],
)
@pytest.mark.parametrize("reading", ["config", "state"])
def test_os_errors_while_restoring_stop_and_move_nothing(
    tmp_path, monkeypatch, error, reading, four_step_workdir
):
    workdir = tmp_path / "run"
    shutil.copytree(four_step_workdir, workdir)
    if isinstance(error, ValueError):
        error.__cause__ = OSError(errno.ESTALE, "Stale file handle")
    real_restore = ocp.CheckpointManager.restore

    def failing_restore(self, step, *args, **kwargs):
        composite = kwargs.get("args")
        item = "state" if composite is not None and "state" in composite else "config"
        if step == 4 and item == reading:
            raise error
        return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
    with pytest.raises(
        checkpointing.CheckpointReadError, match=r"checkpoint 4 in .* could not be read .*nothing"
    ):
        train.train_and_evaluate(tiny_config(num_train_steps=6), str(workdir))
    assert _steps(workdir) == [2, 4]
    assert not (workdir / "checkpoints_damaged").exists()


@pytest.mark.parametrize(
    "error,fix",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free disk space"),
        (PermissionError(errno.EACCES, "Permission denied"), "restore write access"),
        (OSError(errno.EROFS, "Read-only file system"), "restore write access"),
        (OSError(errno.EIO, "Input/output error"), "check the disk and its mount"),
        (RuntimeError("serialization failed"), "check the disk, its free space"),
    ],
)
def test_write_errors_name_the_fix_for_their_cause(error, fix):
    class Manager:
        directory = "/runs/x/checkpoints"

        def all_steps(self):
            return [2]

    message = str(checkpointing._write_error(Manager(), error, 4))
    assert f"Fix: {fix}" in message and "(steps [2]) are intact" in message


def test_no_usable_checkpoint_is_an_error_and_nothing_changes(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=4), str(workdir))
    for step in (2, 4):
        _damage(workdir / "checkpoints" / str(step), "bit_flipped")
    with pytest.raises(UserError, match=r"no usable checkpoint in .*checkpoints: every step"):
        train.train_and_evaluate(tiny_config(num_train_steps=6), str(workdir))
    assert _steps(workdir) == [2, 4]
    assert not (workdir / "checkpoints_damaged").exists()


def _inject_nan_at_step(monkeypatch, nan_step: int) -> None:
    """Makes the batch of training step `nan_step` (1-based) all NaN."""
    real_create_dataset = input_pipeline.create_dataset

    def create_dataset(config, num_devices, start_step=0, source=None, **kwargs):
        ds = real_create_dataset(config, num_devices, start_step, source, **kwargs)
        return ds.enumerate(start=start_step + 1).map(
            lambda step, batch: tf.where(step == nan_step, np.float32("nan"), batch)
        )

    monkeypatch.setattr(input_pipeline, "create_dataset", create_dataset)


@pytest.mark.parametrize(
    "overrides,message",
    [
        # Found at the log line of step 4; checkpoint 4 is never written.
        (
            {"log_every_steps": 2},
            r"non-finite metrics .* at step 4\. .*newest checkpoint \(step 2\)",
        ),
        # Every step: found at step 3 itself.
        (
            {"log_every_steps": 2, "check_finite_every_step": True},
            r"non-finite metrics .* at step 3\. .*newest checkpoint \(step 2\)",
        ),
        # No log line before the checkpoint of step 4: the state check refuses to save it.
        ({"log_every_steps": 100}, r"non-finite values in .* at step 4\. .*\(step 2\) is intact"),
    ],
)
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, overrides, message
):
    _inject_nan_at_step(monkeypatch, nan_step=3)
    workdir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=message):
        train.train_and_evaluate(tiny_config(num_train_steps=6, **overrides), str(workdir))
    assert _steps(workdir) == [2]
    _, state = checkpointing.load_checkpoint(str(workdir))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state))


def test_full_disk_mid_run_is_a_clear_error_and_earlier_checkpoints_survive(tmp_path, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train.train_and_evaluate(tiny_config(num_train_steps=6), str(workdir))
    assert "could not write checkpoint 4" in str(error.value)
    assert "No space left on device" in str(error.value)
    assert "(steps [2]) are intact" in str(error.value)
    assert "Fix: free disk space" in str(error.value)
    monkeypatch.undo()
    assert _steps(workdir) == [2]
    resumed = train.train_and_evaluate(tiny_config(num_train_steps=6), str(workdir))
    assert int(resumed.step) == 6


def test_unwritable_samples_directory_is_a_clear_error(tmp_path, monkeypatch):
    def save_png(grid, path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(sampling, "save_png", save_png)
    with pytest.raises(UserError, match=r"could not write the sample grid .*Permission denied"):
        train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "run"))


def test_second_run_on_the_same_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from dcgan_jax.guards import WorkdirLock\n"
            "with WorkdirLock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(120)\n",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match=rf"in use by another training run \(pid {holder.pid}"):
            train.train_and_evaluate(tiny_config(num_train_steps=2), str(workdir))
        assert not (workdir / "checkpoints").exists()
    finally:
        holder.kill()  # SIGKILL: flock locks die with their process
        holder.wait()
    state = train.train_and_evaluate(tiny_config(num_train_steps=2), str(workdir))
    assert int(state.step) == 2


# Property-based config checks: an oracle written independently of validation.py says
# which single-field values must be accepted; everything else must be refused with a
# message that names the field and a fix, and never with another exception.


def _int(v):
    return type(v) is int


def _number(v):
    return type(v) in (int, float) and math.isfinite(v)


_POSITIVE = lambda v: _int(v) and v > 0
ACCEPTS = {
    "dataset": lambda v: (
        isinstance(v, str)
        and (
            v in DATASETS
            or (v.startswith("lsun/") and len(v) > 5)
            or (v.startswith("folder:") and os.path.isdir(v[7:]))
        )
    ),
    "data_dir": lambda v: isinstance(v, str),
    "image_size": lambda v: _int(v) and v >= 16 and v & (v - 1) == 0,
    "channels": lambda v: _int(v) and v in (1, 3),
    "crop_size": lambda v: _int(v) and v >= 0,
    "shuffle_buffer_size": _POSITIVE,
    "cache_limit_gib": lambda v: _number(v) and v >= 0,
    "z_dim": _POSITIVE,
    "g_features": _POSITIVE,
    "d_features": _POSITIVE,
    "d_head": lambda v: v in ("conv", "linear") and isinstance(v, str),
    "input_sharding": lambda v: v in ("process_shares", "global_batches") and isinstance(v, str),
    "convolutions": lambda v: (
        v in ("auto", "matmul", "mixed", "winograd", "lax") and isinstance(v, str)
    ),
    "half_precision": lambda v: type(v) is bool,
    "batch_size": lambda v: _POSITIVE(v) and v % NUM_DEVICES == 0,
    "num_train_steps": _POSITIVE,
    "learning_rate": lambda v: _number(v) and 0 < v < 1,
    "beta1": lambda v: _number(v) and 0 <= v < 1,
    "beta2": lambda v: _number(v) and 0 <= v < 1,
    "seed": lambda v: _int(v) and 0 <= v < 2**31,
    "ema_decay": lambda v: _number(v) and 0 <= v < 1,
    "eval_every_steps": lambda v: _int(v) and v >= 0,
    "eval_num_samples": lambda v: _int(v) and v >= 2,
    "sample_batchnorm": lambda v: v in ("running", "batch") and isinstance(v, str),
    "eval_features": lambda v: v in ("auto", "inception", "digits") and isinstance(v, str),
    "fid_reference_samples": lambda v: _int(v) and v >= 2,
    "fid_weights": lambda v: isinstance(v, str),
    "fid_stats_dir": lambda v: isinstance(v, str),
    "log_every_steps": _POSITIVE,
    "sample_every_steps": _POSITIVE,
    "num_samples": _POSITIVE,
    "checkpoint_every_steps": _POSITIVE,
    "max_checkpoints": _POSITIVE,
    "check_finite_every_step": lambda v: type(v) is bool,
    "ema_warmup": lambda v: type(v) is bool,
    "epoch_order": lambda v: v in ("permutation", "window") and isinstance(v, str),
    "inception_score_logits": lambda v: v in ("unbiased", "biased") and isinstance(v, str),
}

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, 2, 3, 8, 16, 24, 32, 64, 2**31 - 1, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 2e-4, 0.5, 0.999, 1.0, -0.1]),
    st.text(max_size=12),
    st.sampled_from(
        [
            *DATASETS,
            "lsun/bedroom",
            "lsun/",
            "folder:/nonexistent",
            "conv",
            "x",
            "global_batches",
            "digits",
            "inception",
            "batch",
            "running",
        ]
    ),
    st.lists(st.integers(), max_size=2),
)


def test_oracle_covers_every_config_field():
    assert set(ACCEPTS) == set(default_config.get_config().keys())


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(sorted(ACCEPTS)), value=ANY_VALUE)
def test_every_field_accepts_exactly_its_valid_values(key, value):
    config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
    config[key] = value
    value = config[key]  # ConfigDict converts some values to the field's type (False -> 0.0)
    if ACCEPTS[key](value):
        validate_config(config, NUM_DEVICES)
    else:
        with pytest.raises(ConfigError) as error:
            validate_config(config, NUM_DEVICES)
        message = str(error.value)
        assert message.startswith(f"config.{key}=") and "Fix:" in message


@settings(max_examples=50, deadline=None)
@given(names=st.lists(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), min_size=1, max_size=3))
def test_unknown_fields_are_refused_by_name(names):
    config = tiny_config()
    unknown = [name for name in names if name not in config]
    if not unknown:
        return
    config.unlock()
    for name in unknown:
        config[name] = 1
    with pytest.raises(ConfigError, match=r"unknown field\(s\)") as error:
        validate_config(config, NUM_DEVICES)
    assert all(name in str(error.value) for name in unknown)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.batch_size=abc", "error: flag --config.batch_size=abc: invalid literal"),
        ("--config.nonexistent=1", "error: a --config override names no config field"),
        ("--config.learning_rate=1.5", "error: config.learning_rate=1.5 must be a number in"),
    ],
)
def test_cli_refuses_bad_overrides_with_one_line(tmp_path, override, message):
    result = subprocess.run(
        commands.train_command(tmp_path / "run", override),
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=commands.environment(),
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lock_is_released_when_the_run_ends(tmp_path):
    with guards.WorkdirLock(str(tmp_path)):
        pass
    with guards.WorkdirLock(str(tmp_path)) as lock:
        assert open(lock.path).read().startswith(f"pid {os.getpid()} on ")


@pytest.mark.parametrize(
    "field,value",
    [
        ("shuffle_buffer_size", 1000),
        ("input_sharding", "global_batches"),
        ("seed", 1),
        ("epoch_order", "window"),
    ],
)
def test_resume_refuses_a_config_that_changes_the_data_stream(field, value):
    saved = tiny_config()
    now = tiny_config(**{field: value})
    with pytest.raises(UserError, match=rf"different config \({field}: checkpoint"):
        checkpointing.check_compatible(saved, now, "/runs/x/checkpoints")
    checkpointing.check_compatible(saved, tiny_config(), "/runs/x/checkpoints")  # same: fine
