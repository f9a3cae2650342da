"""The XLA flags the CLIs add by default (dcgan_jax/xla_flags.py)."""

import importlib
import importlib.metadata
import importlib.util

import pytest

from dcgan_jax import xla_flags

CLIS = ("train", "evaluate", "sample", "compare", "benchmark")
YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_default_xla_flags_are_added_unless_the_user_named_them():
    defaults = list(xla_flags.defaults())
    assert xla_flags.with_defaults("").split() == defaults
    assert xla_flags.with_defaults(" ".join(defaults)).split() == defaults  # idempotent
    device_count = "--xla_force_host_platform_device_count=2"
    assert xla_flags.with_defaults(device_count).split() == [device_count, *defaults]
    environ = {"XLA_FLAGS": device_count}
    xla_flags.apply_defaults(environ)
    expected = xla_flags.defaults(cpu_only_process=xla_flags.cpu_only(environ))
    assert environ["XLA_FLAGS"].split() == [device_count, *expected]

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


def test_the_cpu_convolution_flag_only_for_jaxlib_versions_that_know_it():
    # An unknown flag stops XLA on every backend: added only where it was checked.
    assert xla_flags.CPU_CONVOLUTIONS in xla_flags.defaults((0, 10))
    assert xla_flags.CPU_CONVOLUTIONS in xla_flags.defaults((0, 9))
    for version in ((0, 8), (0, 11), (1, 0)):
        assert xla_flags.defaults(version, cpu_only_process=False) == (xla_flags.GPU_GEMMS,)
        assert xla_flags.CPU_CONVOLUTIONS not in xla_flags.with_defaults("", version)
    assert xla_flags.jaxlib_version() is not None


def test_the_cpu_compile_flag_only_for_cpu_only_processes_and_checked_jaxlib():
    # LLVM options: an unknown one stops XLA, and LLVM also builds GPU kernels.
    assert xla_flags.CPU_COMPILE in xla_flags.defaults((0, 10), cpu_only_process=True)
    assert xla_flags.CPU_COMPILE not in xla_flags.defaults((0, 10), cpu_only_process=False)
    for version in ((0, 9), (0, 11)):
        assert xla_flags.CPU_COMPILE not in xla_flags.defaults(version, cpu_only_process=True)
    flags = xla_flags.with_defaults("", (0, 10), cpu_only_process=False).split()
    expected = [xla_flags.GPU_GEMMS, xla_flags.CPU_CONVOLUTIONS, xla_flags.CPU_FUSION_EMITTERS]
    assert flags == expected
    for version in ((0, 9), (0, 11)):
        assert xla_flags.CPU_FUSION_EMITTERS not in xla_flags.defaults(
            version, cpu_only_process=True
        )


def test_cpu_only_reads_jax_platforms_then_what_could_add_a_backend(monkeypatch, tmp_path):
    assert xla_flags.cpu_only({"JAX_PLATFORMS": "cpu"})
    assert xla_flags.cpu_only({"JAX_PLATFORMS": " CPU "})
    assert not xla_flags.cpu_only({"JAX_PLATFORMS": "cuda"})
    assert not xla_flags.cpu_only({"JAX_PLATFORMS": "cuda,cpu"})

    # Nothing installed that adds a backend (whatever this machine has).
    find_spec = importlib.util.find_spec
    hidden = {"jax_plugins", "libtpu"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else find_spec(name, *a),
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    assert xla_flags.cpu_only({})
    assert not xla_flags.cpu_only({"PJRT_NAMES_AND_LIBRARY_PATHS": "cuda:/lib/x.so"})
    assert not xla_flags.cpu_only({"TPU_LIBRARY_PATH": "/lib/libtpu.so"})
    environ = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cuda"}
    xla_flags.apply_defaults(environ)
    assert xla_flags.CPU_COMPILE not in environ["XLA_FLAGS"].split()

    # A plugin's entry point, the libtpu package, a module in the jax_plugins namespace.
    plugin = importlib.metadata.EntryPoint("cuda", "jax_plugins.xla_cuda12", "jax_plugins")
    with monkeypatch.context() as patch:
        patch.setattr(
            importlib.metadata,
            "entry_points",
            lambda group=None: [plugin] if group == "jax_plugins" else [],
        )
        assert not xla_flags.cpu_only({})
        assert xla_flags.cpu_only({"JAX_PLATFORMS": "cpu"})
    hidden.discard("libtpu")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else None
    )
    assert not xla_flags.cpu_only({})
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    (tmp_path / "jax_plugins").mkdir()
    (tmp_path / "jax_plugins" / "xla_fake.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not xla_flags.cpu_only({})


@pytest.mark.parametrize(
    "flags,version,expected",
    [
        ("", (0, 10), True),  # jaxlib 0.10's default: YNN runs them
        ("", (0, 9), False),  # jaxlib 0.9 leaves them to XLA's own kernels
        (xla_flags.CPU_CONVOLUTIONS, (0, 10), False),
        (f"{YNN}=", (0, 10), False),
        (f"{YNN}=dot,reduce", (0, 10), False),
        (f"{YNN}=-reduce", (0, 10), True),
        (f"{YNN}=individual_convolution", (0, 10), True),
        (f'{YNN}="dot,individual_convolution"', (0, 10), True),  # XLA strips the quotes
        (f"{YNN}", (0, 10), True),  # no value (XLA refuses it; not an error here)
        (
            f"{YNN}=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
            (0, 10),
            True,
        ),
        # Repeated, the flag applies in turn (checked against the compiled programs of
        # jaxlib 0.10.2): -dot leaves convolutions out, +x and a plain list bring them back.
        (f"{xla_flags.CPU_CONVOLUTIONS} {YNN}=-dot", (0, 10), False),
        (f"{xla_flags.CPU_CONVOLUTIONS} {YNN}=+individual_convolution", (0, 10), True),
        (f"{xla_flags.CPU_CONVOLUTIONS} {YNN}=dot,individual_convolution", (0, 10), True),
        (f"{xla_flags.CPU_CONVOLUTIONS} {YNN}=dot", (0, 10), False),
    ],
)
def test_whether_ynn_runs_convolutions_follows_the_flags(flags, version, expected):
    assert xla_flags.ynn_runs_convolutions(flags, version) == expected


def test_what_ynn_runs_convolutions_says_is_what_xla_compiles():
    # A D-sized convolution, which jaxlib 0.10 hands to YNN by default, compiled under this
    # process's XLA_FLAGS (tests/conftest.py applies the CLIs' defaults, so `mixed` is
    # tested as the CLIs run it, unless the user's XLA_FLAGS says otherwise).
    import jax
    import jax.numpy as jnp

    from dcgan_jax import models

    if xla_flags.CPU_CONVOLUTIONS in xla_flags.defaults():
        assert not xla_flags.ynn_runs_convolutions(xla_flags.with_defaults(""))
    x, kernel = jnp.ones((8, 32, 32, 64)), jnp.ones((4, 4, 64, 128))
    program = jax.jit(models._pytorch_strided_conv).lower(x, kernel).compile().as_text()
    assert " convolution(" in program  # inside a YNN fusion or on its own
    assert ("__ynn_fusion" in program) == xla_flags.ynn_runs_convolutions()
