"""Errors a user can fix, and the checks that find them before anything is compiled."""

from __future__ import annotations

import contextlib
import math
import os
import sys

from dcgan_jax import default_config

# Datasets the input pipeline knows; `digits` ships with scikit-learn, the rest come from TFDS
# (`lsun/<category>` for any LSUN category); `folder:PATH` reads a folder of images.
DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist", "celeb_a", "lsun/<category>")
FOLDER_PREFIX = "folder:"
# What a `folder:` dataset reads (tf.io.decode_image's formats; GIFs: the first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Each epoch's order (config.epoch_order; see input_pipeline.batched_stream).
EPOCH_ORDERS = ("permutation", "window")
# Which logits the Inception Score takes (config.inception_score_logits): "unbiased"
# (pool3 @ W, as the original IS code and torch-fidelity's default) or "biased" (the fc
# layer's output, W and its bias).
SCORE_LOGITS = ("unbiased", "biased")
# How the strided convolutions are computed (config.convolutions, besides "auto"; see
# models.resolve_convolutions).
CONVOLUTIONS = ("matmul", "mixed", "winograd", "lax")
# The values config.convolutions takes, as its error messages list them.
CONVOLUTION_CHOICES = ", ".join(repr(c) for c in ("auto", *CONVOLUTIONS[:-1]))
CONVOLUTION_CHOICES += f" or {CONVOLUTIONS[-1]!r}"


def list_image_files(directory: str) -> list[str]:
    """Image files under `directory` (recursively), sorted so every process agrees. Here,
    not in input_pipeline, because the FID cache is keyed by the list without TensorFlow."""
    paths = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs.sort()
        paths.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(paths)


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
    "eval_num_samples",
    "fid_reference_samples",
)
_BOOLS = ("half_precision", "check_finite_every_step", "ema_warmup")
_STRINGS = (
    "eval_features",
    "inception_score_logits",
    "epoch_order",
    "sample_batchnorm",
    "dataset",
    "data_dir",
    "convolutions",
    "d_head",
    "input_sharding",
    "fid_weights",
    "fid_stats_dir",
)


def effective_epoch_order(config) -> str:
    """The epoch order `config` gives: "permutation" only where the source has random
    access (the digits, folders); TFDS datasets are window-shuffled whatever is asked."""
    order = config.get("epoch_order", "window")
    random_access = config.dataset == "digits" or config.dataset.startswith(FOLDER_PREFIX)
    return order if random_access else "window"


class UserError(Exception):
    """A problem with the user's input. The CLIs print the message and exit non-zero."""


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the fix."""


def describe_error(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (at most `limit` characters of it), for embedding
    a caught exception in a one-line error."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit] if lines else ''}"


@contextlib.contextmanager
def exit_on_user_error(*also: type[Exception]):
    """For CLIs: a UserError (or one of `also`) becomes one `error:` line and exit code 2."""
    try:
        yield
    except (UserError, *also) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`, where a bad flag,
    a `--config.key=value` that names no field or does not parse, or a config file that is
    missing or does not compile is one `error:` line and exit code 2 instead of a
    traceback. Also lowers absl's logging to warnings unless --verbosity is given."""
    from absl import flags

    try:
        remaining = flags.FLAGS(argv)
        _check_config_file_loaded(flags.FLAGS)
        if not flags.FLAGS["verbosity"].present:
            # Orbax and TFDS log every file operation at INFO; the CLIs print progress.
            from absl import logging

            logging.set_verbosity(logging.WARNING)
        return remaining
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
    except SyntaxError as e:  # raised while ml_collections loads the config file
        print(
            f"error: the config file {e.filename} has a syntax error at line {e.lineno} "
            f"({e.msg}). Fix: correct it, or start from a file in configs/.",
            file=sys.stderr,
        )
    except flags.Error as e:
        message = str(e).rstrip(".")
        print(f"error: {message}. Pass --helpshort to see the flags.", file=sys.stderr)
    except (KeyError, AttributeError) as e:
        print(
            f"error: a --config override names no config field ({str(e).strip(chr(34))}). "
            "Fix: use a field of dcgan_jax/default_config.py, spelled as there.",
            file=sys.stderr,
        )
    except (TypeError, ValueError) as e:
        print(
            f"error: a --config override does not fit its field ({e}). Fix: give a value of "
            "the field's type (see dcgan_jax/default_config.py).",
            file=sys.stderr,
        )
    sys.exit(2)


def _check_config_file_loaded(flag_values) -> None:
    """ml_collections defers a config file's load error (a missing file, a syntax error) to
    the first use of the config, as a traceback; raise it here as a UserError instead."""
    if "config" not in flag_values or flag_values["config"].value is None:
        return
    try:
        flag_values["config"].value.keys()
    except (OSError, AttributeError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        path = flag_values["config"].config_filename
        raise UserError(
            f"could not load the config file {path!r} ({lines[-1] if lines else e}). Fix: "
            "pass an existing config file, e.g. --config configs/cifar.py."
        ) from e


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _field_problem(key: str, value) -> str | None:
    """What is wrong with `config.key = value` on its own (None if nothing), with the fix."""
    if key in _POSITIVE_INTS and (not _is_int(value) or value <= 0):
        return f"must be a positive integer. Fix: --config.{key}=<positive integer>"
    if key in _BOOLS and not isinstance(value, bool):
        return f"must be True or False. Fix: --config.{key}=False"
    if key in _STRINGS and not isinstance(value, str):
        return f"must be a string. Fix: --config.{key}=<text>"
    if key == "image_size" and (value < 16 or value & (value - 1)):
        return (
            "must be a power of two >= 16 (16, 32, 64, 128, ...). Fix: e.g. --config.image_size=32"
        )
    if key == "channels" and (not _is_int(value) or value not in (1, 3)):
        return "must be 1 (grayscale) or 3 (RGB). Fix: --config.channels=3"
    if key == "crop_size" and (not _is_int(value) or value < 0):
        return (
            "must be 0 (the largest centered square) or a positive number of pixels. "
            "Fix: --config.crop_size=0"
        )
    if key == "dataset" and not _is_known_dataset(value):
        return (
            f"is not a dataset this project reads. Fix: --config.dataset=<one of "
            f"{', '.join(DATASETS)}> or --config.dataset=folder:/path/to/images"
        )
    if key == "input_sharding" and value not in ("process_shares", "global_batches"):
        return (
            "must be 'process_shares' or 'global_batches'. "
            "Fix: --config.input_sharding=process_shares"
        )
    if key == "convolutions" and value not in ("auto", *CONVOLUTIONS):
        return f"must be {CONVOLUTION_CHOICES}. Fix: --config.convolutions=auto"
    if key == "sample_batchnorm" and value not in ("running", "batch"):
        return "must be 'running' or 'batch'. Fix: --config.sample_batchnorm=running"
    if key == "epoch_order" and value not in EPOCH_ORDERS:
        return "must be 'permutation' or 'window'. Fix: --config.epoch_order=permutation"
    if key == "inception_score_logits" and value not in SCORE_LOGITS:
        return "must be 'unbiased' or 'biased'. Fix: --config.inception_score_logits=unbiased"
    if key == "eval_features" and value not in ("auto", "inception", "digits"):
        return "must be 'auto', 'inception' or 'digits'. Fix: --config.eval_features=auto"
    if key == "d_head" and value not in ("conv", "linear"):
        return "must be 'conv' or 'linear'. Fix: --config.d_head=linear"
    if key == "learning_rate" and not (_is_real(value) and 0 < value < 1):
        return "must be a number in (0, 1). Fix: e.g. --config.learning_rate=2e-4"
    if key in ("beta1", "beta2") and not (_is_real(value) and 0 <= value < 1):
        example = "0.5" if key == "beta1" else "0.999"
        return f"must be a number in [0, 1). Fix: e.g. --config.{key}={example}"
    if key == "eval_every_steps" and (not _is_int(value) or value < 0):
        return "must be 0 (no evaluation) or a positive integer. Fix: --config.eval_every_steps=0"
    if key in ("eval_num_samples", "fid_reference_samples") and value < 2:
        return f"must be at least 2 (FID needs a covariance). Fix: --config.{key}=10000"
    if key == "ema_decay" and not (_is_real(value) and 0 <= value < 1):
        return (
            "must be a number in [0, 1) (0 turns the EMA off). Fix: e.g. --config.ema_decay=0.999"
        )
    if key == "cache_limit_gib" and not (_is_real(value) and value >= 0):
        return "must be a number of GiB >= 0 (0: never cache). Fix: --config.cache_limit_gib=4"
    if key == "seed" and not (_is_int(value) and 0 <= value < 2**31):
        return "must be an integer in [0, 2**31). Fix: e.g. --config.seed=0"
    return None


def validate_config(config, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError for the first config value that cannot work.

    Fields of older versions are first rewritten in place (`upgrade_legacy_fields`). Every
    field is checked for its type and range; then the fields that depend on each other or
    on the machine.

    Args:
      config: the run's ConfigDict.
      num_devices: local devices of each process.
      num_processes: processes the global batch is split across first.
    """
    default_config.upgrade_legacy_fields(config)
    known = default_config.get_config().keys()
    unknown = sorted(set(config.keys()) - set(known))
    if unknown:
        raise ConfigError(
            f"config has unknown field(s) {unknown}. Remove them; the known fields are "
            "listed, with comments, in dcgan_jax/default_config.py."
        )
    missing = sorted(set(known) - set(config.keys()))
    if missing:
        raise ConfigError(
            f"config lacks field(s) {missing}. Fix: build it from "
            "dcgan_jax.default_config.get_config(), which has every field."
        )
    for key in known:
        problem = _field_problem(key, config[key])
        if problem:
            raise ConfigError(f"config.{key}={config[key]!r} {problem}.")
    if config.eval_features == "digits" and config.dataset != "digits":
        raise ConfigError(
            f"config.eval_features='digits' scores with a classifier of the digits dataset, "
            f"not of {config.dataset!r}. Fix: --config.eval_features=auto."
        )
    if config.dataset.startswith(FOLDER_PREFIX):
        folder = config.dataset[len(FOLDER_PREFIX) :]
        if not os.path.isdir(folder):
            raise ConfigError(
                f"config.dataset={config.dataset!r}: {folder!r} is not an existing directory. "
                "Fix: --config.dataset=folder:/path/to/a/folder/of/images."
            )
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
    """Creates `workdir` if needed and proves a file can be written there.

    Object-store URLs (gs://, s3://) are refused: the lock, samples and events are written
    with local file operations, which would create a local folder named 'gs:'."""
    if "://" in workdir:
        raise UserError(
            f"workdir {workdir!r} is a URL; only local or mounted file systems are supported. "
            "Fix: mount the bucket (e.g. gcsfuse) and pass its local path, or train in a local "
            "--workdir and copy it."
        )
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test-{os.getpid()}")  # processes may share it
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"workdir {workdir!r} cannot be written ({e.strerror or e}). "
            "Fix: pass a --workdir you can write to, or fix its permissions."
        ) from e
