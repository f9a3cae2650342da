"""Errors a user can fix, and the checks that find them before anything is compiled."""

from __future__ import annotations

import contextlib
import os
import sys

from dcgan_jax import default_config

# Datasets the input pipeline knows; `digits` ships with scikit-learn, the rest come from TFDS
# (`lsun/<category>` for any LSUN category); `folder:PATH` reads a folder of images.
DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist", "celeb_a", "lsun/<category>")
FOLDER_PREFIX = "folder:"


def _is_known_dataset(name) -> bool:
    if not isinstance(name, str):
        return False
    if name.startswith("lsun/"):
        return len(name) > len("lsun/")
    return name in DATASETS or name.startswith(FOLDER_PREFIX)


_POSITIVE_INTS = (
    "image_size",
    "z_dim",
    "g_features",
    "d_features",
    "batch_size",
    "num_train_steps",
    "log_every_steps",
    "sample_every_steps",
    "num_samples",
    "checkpoint_every_steps",
    "max_checkpoints",
    "shuffle_buffer_size",
)


class UserError(Exception):
    """A problem with the user's input. The CLIs print the message and exit non-zero."""


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the fix."""


@contextlib.contextmanager
def exit_on_user_error(*also: type[Exception]):
    """For CLIs: a UserError (or one of `also`) becomes one `error:` line and exit code 2."""
    try:
        yield
    except (UserError, *also) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError for the first config value that cannot work.

    Args:
      config: the run's ConfigDict.
      num_devices: local devices of each process.
      num_processes: processes the global batch is split across first.
    """
    unknown = sorted(set(config.keys()) - set(default_config.get_config().keys()))
    if unknown:
        raise ConfigError(
            f"config has unknown field(s) {unknown}. Remove them; the known fields are "
            "listed, with comments, in dcgan_jax/default_config.py."
        )
    for key in _POSITIVE_INTS:
        value = config[key]
        if not _is_int(value) or value <= 0:
            raise ConfigError(
                f"config.{key}={value!r} must be a positive integer. "
                f"Fix: --config.{key}=<positive integer>."
            )
    size = config.image_size
    if size < 16 or size & (size - 1):
        raise ConfigError(
            f"config.image_size={size} must be a power of two >= 16 (16, 32, 64, 128, ...). "
            "Fix: e.g. --config.image_size=32."
        )
    if config.channels not in (1, 3) or not _is_int(config.channels):
        raise ConfigError(
            f"config.channels={config.channels!r} must be 1 (grayscale) or 3 (RGB). "
            "Fix: --config.channels=3."
        )
    if not _is_known_dataset(config.dataset):
        raise ConfigError(
            f"config.dataset={config.dataset!r} is not a dataset this project reads. "
            f"Fix: --config.dataset=<one of {', '.join(DATASETS)}> or "
            "--config.dataset=folder:/path/to/images."
        )
    if config.dataset.startswith(FOLDER_PREFIX):
        folder = config.dataset[len(FOLDER_PREFIX) :]
        if not os.path.isdir(folder):
            raise ConfigError(
                f"config.dataset={config.dataset!r}: {folder!r} is not an existing directory. "
                "Fix: --config.dataset=folder:/path/to/a/folder/of/images."
            )
    if not _is_int(config.crop_size) or config.crop_size < 0:
        raise ConfigError(
            f"config.crop_size={config.crop_size!r} must be 0 (the largest centered square) "
            "or a positive number of pixels. Fix: --config.crop_size=0."
        )
    if config.d_head not in ("conv", "linear"):
        raise ConfigError(
            f"config.d_head={config.d_head!r} must be 'conv' or 'linear'. "
            "Fix: --config.d_head=linear."
        )
    if not config.learning_rate > 0:
        raise ConfigError(
            f"config.learning_rate={config.learning_rate!r} must be > 0. "
            "Fix: e.g. --config.learning_rate=2e-4."
        )
    for key in ("beta1", "beta2"):
        if not 0 <= config[key] < 1:
            raise ConfigError(
                f"config.{key}={config[key]!r} must be in [0, 1). Fix: e.g. --config.{key}="
                + ("0.5" if key == "beta1" else "0.999")
                + "."
            )
    if not _is_int(config.seed):
        raise ConfigError(f"config.seed={config.seed!r} must be an integer.")
    total = num_devices * num_processes
    if config.batch_size % total:
        where = f"{num_devices} local devices" + (
            f" x {num_processes} processes" if num_processes > 1 else ""
        )
        raise ConfigError(
            f"config.batch_size={config.batch_size} does not split evenly across the "
            f"{where}. Fix: a multiple of {total}, e.g. "
            f"--config.batch_size={total * max(1, config.batch_size // total)}."
        )


def check_workdir_writable(workdir: str) -> None:
    """Creates `workdir` if needed and proves a file can be written there."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"workdir {workdir!r} cannot be written ({e.strerror or e}). "
            "Fix: pass a --workdir you can write to, or fix its permissions."
        ) from e
