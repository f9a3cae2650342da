"""The XLA flags the CLIs add by default (dcgan_jax/xla_flags.py)."""

import importlib

import pytest

from dcgan_jax import xla_flags

CLIS = ("train", "evaluate", "sample", "compare", "benchmark")


def test_default_xla_flags_are_added_unless_the_user_named_them():
    defaults = list(xla_flags.DEFAULTS)
    assert xla_flags.with_defaults("").split() == defaults
    assert xla_flags.with_defaults(" ".join(defaults)).split() == defaults  # idempotent
    device_count = "--xla_force_host_platform_device_count=2"
    assert xla_flags.with_defaults(device_count).split() == [device_count, *defaults]
    environ = {"XLA_FLAGS": device_count}
    xla_flags.apply_defaults(environ)
    assert environ["XLA_FLAGS"].split() == [device_count, *defaults]

    # The user's own value of a default flag wins, whatever it is.
    for flag in defaults:
        name = flag.split("=")[0]
        flags = xla_flags.with_defaults(f"{name}=user_value").split()
        assert [f for f in flags if f.split("=")[0] == name] == [f"{name}=user_value"]


class _Applied(Exception):
    pass


@pytest.mark.parametrize("cli", CLIS)
def test_each_cli_applies_the_defaults_before_anything_else(cli, monkeypatch):
    """Before JAX starts a backend, which reads XLA_FLAGS once: here, before `main` reads
    a single flag (an absl error would come first otherwise)."""

    def applied(*args, **kwargs):
        raise _Applied

    monkeypatch.setattr(xla_flags, "apply_defaults", applied)
    module = importlib.import_module(f"dcgan_jax.{cli}")
    with pytest.raises(_Applied):
        module.main([cli])
