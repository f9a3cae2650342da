"""XLA flags that the command-line tools add by default, because they were measured faster.

Each CLI calls `apply_defaults()` first thing in `main`, before JAX initialises a backend
(XLA reads XLA_FLAGS once, then). A flag that XLA_FLAGS already names is left as the user
set it, so `XLA_FLAGS=--xla_gpu_enable_triton_gemm=true` restores XLA's default.

XLA refuses to start on a flag it does not know ("Unknown flag in XLA_FLAGS"). The tests
run under these flags too (tests/conftest.py), so a jaxlib that drops one fails them as
well: remove the flag here then.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# The GPU's matrix products through cuBLAS rather than Triton-generated kernels. On an
# NVIDIA H100 (jax 0.11.2) it was faster in all six cases measured (1.02-1.18x images/s:
# cifar and celeba, batch 64 and 256, fp32 and bf16), compiled in 13-16 s instead of
# 21-30 s and took at most 3 MiB more memory, up to 127 MiB less (README, "On a GPU"). It
# picks kernels, not precision: float32 products stay TF32 by default and full float32 at
# `highest`. CPUs and TPUs ignore it.
DEFAULTS = ("--xla_gpu_enable_triton_gemm=false",)


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_defaults(flags: str) -> str:
    """`flags` (an XLA_FLAGS value) with each of `DEFAULTS` appended that it does not name."""
    named = {_name(flag) for flag in flags.split()}
    missing = [flag for flag in DEFAULTS if _name(flag) not in named]
    return " ".join([flags.strip(), *missing]).strip()


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets XLA_FLAGS to `with_defaults` of its value."""
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
