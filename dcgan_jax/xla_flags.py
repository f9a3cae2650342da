"""XLA flags that the command-line tools add by default, because they were measured faster,
and what they mean for the models (`ynn_runs_convolutions`, read by `models.py`).

Each CLI calls `apply_defaults()` first thing in `main`, before JAX initialises a backend
(XLA reads XLA_FLAGS once, then). A flag that XLA_FLAGS already names is left as the user
set it, so `XLA_FLAGS=--xla_gpu_enable_triton_gemm=true` restores XLA's default.

XLA refuses to start on a flag it does not know ("Unknown flag in XLA_FLAGS"), on every
backend. A flag that only some jaxlib versions know is added only for those
(`CPU_CONVOLUTIONS_JAXLIB`). The tests run under these flags too (tests/conftest.py).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
from collections.abc import Mapping, MutableMapping

# The GPU's matrix products through cuBLAS rather than Triton-generated kernels. On an
# NVIDIA H100 (jax 0.11.2) it was faster in all six cases measured (1.02-1.18x images/s:
# cifar and celeba, batch 64 and 256, fp32 and bf16), compiled in 13-16 s instead of
# 21-30 s and took at most 3 MiB more memory, up to 127 MiB less (README, "On a GPU"). It
# picks kernels, not precision: float32 products stay TF32 by default and full float32 at
# `highest`. CPUs and TPUs ignore it.
GPU_GEMMS = "--xla_gpu_enable_triton_gemm=false"

# XLA:CPU's convolutions by XLA's own convolution kernels rather than its YNN library
# (which keeps the matrix products and reductions). jaxlib 0.10 hands D's convolutions to
# YNN, where they ran slower: on a 2-core AMD EPYC (Zen 5), celeba D's 32x32 layer forward
# 13.2 -> 10.5 ms, its kernel gradient 19.7 -> 14.4 ms, and the whole training step
# 1.12x (celeba) and 1.05x (cifar) in one process, alternating windows; with `mixed`
# taking the native convolution on more layers where they are XLA's own
# (`ynn_runs_convolutions`), 1.16x and 1.11x at batch 64, 1.19x and 1.29x for celeba at
# batch 16 and 256 (README, "On this CPU"). GPUs and TPUs ignore it.
CPU_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# jaxlib versions that know the flag: checked in the 0.9.0, 0.10.0 and 0.10.2 wheels (not
# in 0.7.0 and 0.8.0); a version outside the range does without (a newer jaxlib may have
# renamed or dropped an experimental flag, and an unknown flag stops XLA).
CPU_CONVOLUTIONS_JAXLIB = ((0, 9), (0, 11))  # [lowest, first version not checked)
# jaxlib 0.9 knows the flag but leaves convolutions to XLA's own kernels anyway.
YNN_CONVOLUTIONS_FROM_JAXLIB = (0, 10)

# LLVM's loop strength reduction and loop unrolling off in the code XLA generates (on the CPU:
# the fused elementwise kernels and XLA's own convolutions; the matrix products are library
# code). Compilation is most of the time to the first step, and these two passes took much
# of it: on a 2-core AMD EPYC (Zen 5), jaxlib 0.10.2, the cifar step compiled in 4.2-4.4 s
# instead of 5.3 (first step 7.6 against 9.0 s) and celeba's in 4.0-4.4 s instead of 4.7-4.8,
# with the steps as fast (three alternating runs of 16 steps each: cifar 297, 289, 307 ms
# against 317, 300, 310; celeba 446, 453, 444 against 445, 446, 448; README "On this CPU").
# The options are LLVM's, and LLVM also builds the GPU's kernels, so the flag is added only
# where no accelerator plugin is installed or JAX_PLATFORMS is "cpu" (`cpu_only`).
CPU_COMPILE = "--xla_backend_extra_options=-disable-lsr,-unroll-threshold=0"
# jaxlib versions whose LLVM was checked to know both options (an unknown one stops XLA):
# 0.10.2.
CPU_COMPILE_JAXLIB = ((0, 10), (0, 11))

_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def _fusion_type(name: str) -> str:
    """A fusion type as XLA reads it (quotes stripped, any case, with or without the enum's
    `LIBRARY_FUSION_TYPE_` prefix), lower case and without the prefix, a leading + or -
    kept: so that every spelling XLA accepts compares equal."""
    name = name.strip().strip("\"'").lower()
    if not name:
        return name
    sign = name[0] if name[0] in "+-" else ""
    return sign + name.lstrip("+-").removeprefix("library_fusion_type_")


@functools.cache
def jaxlib_version() -> tuple[int, int] | None:
    """(major, minor) of the installed jaxlib, None when there is none."""
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def cpu_only(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether JAX will run on the CPU alone: JAX_PLATFORMS is "cpu", or no accelerator
    plugin is installed (JAX's `jax_plugins` entry points and namespace, libtpu)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and any(
        pkgutil.iter_modules(namespace.submodule_search_locations or [])
    ):
        return False
    return importlib.util.find_spec("libtpu") is None


def _within(version: tuple[int, int] | None, checked: tuple[tuple[int, int], ...]) -> bool:
    lowest, first_unchecked = checked
    return version is not None and lowest <= version < first_unchecked


def defaults(
    version: tuple[int, int] | None = None, cpu_only_process: bool | None = None
) -> tuple[str, ...]:
    """The flags added by default under jaxlib `version` (default: the installed one) in a
    process that runs on the CPU alone or not (default: `cpu_only()`)."""
    version = jaxlib_version() if version is None else version
    flags = [GPU_GEMMS]
    if _within(version, CPU_CONVOLUTIONS_JAXLIB):
        flags.append(CPU_CONVOLUTIONS)
    if _within(version, CPU_COMPILE_JAXLIB):
        if cpu_only() if cpu_only_process is None else cpu_only_process:
            flags.append(CPU_COMPILE)
    return tuple(flags)


def with_defaults(
    flags: str, version: tuple[int, int] | None = None, cpu_only_process: bool | None = None
) -> str:
    """`flags` (an XLA_FLAGS value) with each of `defaults(version, cpu_only_process)`
    appended that it does not name."""
    named = {_name(flag) for flag in flags.split()}
    added = defaults(version, cpu_only_process)
    missing = [flag for flag in added if _name(flag) not in named]
    return " ".join([flags.strip(), *missing]).strip()


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets XLA_FLAGS to `with_defaults` of its value."""
    flags = with_defaults(environ.get("XLA_FLAGS", ""), cpu_only_process=cpu_only(environ))
    environ["XLA_FLAGS"] = flags


def ynn_runs_convolutions(flags: str | None = None, version: tuple[int, int] | None = None) -> bool:
    """Whether XLA:CPU hands convolutions to its YNN library under XLA_FLAGS `flags`
    (default: this process's) and jaxlib `version` (default: the installed one).

    True on jaxlib 0.10 and later unless the flags take `individual_convolution` out of
    YNN's share (`CPU_CONVOLUTIONS`, or a list of fusion types that does not name it;
    repeated, the flag applies in turn: `-dot` after `CPU_CONVOLUTIONS` keeps it out).
    XLA reads XLA_FLAGS when the backend starts: a value changed later is not what runs.
    """
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    version = jaxlib_version() if version is None else version
    if version is None or version < YNN_CONVOLUTIONS_FROM_JAXLIB:
        return False
    convolutions = True  # in jaxlib 0.10's default set
    for flag in flags.split():
        if _name(flag) != _YNN_FUSION_FLAG or "=" not in flag:
            continue
        # Each occurrence applies in turn: +x and -y change the set so far, a plain list
        # (or nothing) replaces it.
        types = [t for t in map(_fusion_type, flag.split("=", 1)[1].split(",")) if t]
        if types and all(t[0] in "+-" for t in types):
            for t in types:
                if t[1:] == "individual_convolution":
                    convolutions = t[0] == "+"
        else:
            convolutions = "individual_convolution" in types
    return convolutions
