"""Command lines for the tests that run the CLIs in subprocesses."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=2"


def train_command(workdir, *args: str, **overrides) -> list[str]:
    """`python -m dcgan_jax.train` on configs/digits.py in `workdir`, with `--config.key=value`
    for each override, then `args`."""
    return [
        sys.executable,
        "-m",
        "dcgan_jax.train",
        "--config",
        os.path.join(REPO, "configs", "digits.py"),
        "--workdir",
        str(workdir),
        *(f"--config.{key}={value}" for key, value in overrides.items()),
        *args,
    ]


def without_tensorflow(module: str, *args: str) -> list[str]:
    """`python -m module args` in a process where importing TensorFlow or TFDS fails: for
    the entry points that must not need them."""
    code = (
        "import runpy, sys; sys.modules['tensorflow'] = None;"
        "sys.modules['tensorflow_datasets'] = None; sys.argv = sys.argv[1:];"
        "runpy.run_module(sys.argv[0], run_name='__main__')"
    )
    return [sys.executable, "-c", code, module, *args]


def digits_config(**overrides):
    """The config that `train_command(workdir, **overrides)` has the CLI build, built in this
    process; locked, so that a misspelt key fails as it does on the command line."""
    from tests.test_models import _load_config

    config = _load_config("digits")
    config.lock()
    config.update(overrides)
    return config


def environment(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess: 2 CPU devices (as in the tests) beside
    any other XLA flags the session runs with, the repository importable, quiet TensorFlow."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT_FLAG not in xla_flags.split():
        xla_flags = f"{xla_flags} {DEVICE_COUNT_FLAG}".strip()
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": REPO,
        **extra,
    }
