"""glibc's allocator and JAX's dispatch set up for XLA's per-step buffers, for the
command-line tools on Linux.

XLA:CPU allocates a step's temporaries (one buffer: 214 MiB for cifar's step at batch 64)
and its outputs afresh in every step and frees them at its end. glibc serves allocations
above 32 MiB, and every allocation above 64 MiB made by a thread other than the main one,
with a memory map of its own and returns it to the kernel when freed: every step the
kernel mapped, zeroed and unmapped 310 MiB for cifar's step (17-23 ms of system time in a
step of 275-335 ms on the 2-core AMD EPYC (Zen 5) VM the project measured on before).
Worse, where a virtual machine hands the memory its guest leaves free back to the host
(virtio-balloon free page reporting, after about 2 s, as on that VM and on the 2-core Intel
Xeon VM of README "Speed"), the first step after a pause, such as the benchmark's PyTorch
window, ran 400-640 ms while the host gave the memory back.

So `train` and `benchmark` run with these glibc tunables (GLIBC_TUNABLES), the first two
only where JAX runs on the CPU alone (`xla_flags.cpu_only`):
  glibc.malloc.mmap_max=0        no allocation of the main heap gets a map of its own;
  glibc.malloc.trim_threshold=N  freed memory stays in the process for the next step;
  glibc.malloc.hugetlb=1         the heap on transparent huge pages (2 MiB), where the
                                 kernel's mode is `madvise` and glibc is 2.35 or later;
and, under the first two, JAX runs CPU computations in the thread that calls them
(`jax_cpu_enable_async_dispatch=False`, `dispatch_in_calling_thread`): XLA then allocates
the step's buffers from the main thread, whose heap alone keeps even the largest blocks
(the heaps of glibc's other arenas map every block above 64 MiB, whatever the tunables
say). The previous way to that end, one arena for all threads (`glibc.malloc.arena_max=1`),
ran the steps as fast but made XLA's compiler threads queue for the arena's lock: celeba's
step compiled in 6.6-6.9 s instead of 5.0-5.5 (2-core Intel Xeon). The process's memory
stays at its peak instead of returning to the kernel between steps.

glibc reads its tunables once, when a process starts, so the CLIs start themselves again
with the tunables set (`reexec_with_tunables`, called in their `__main__` before their
other imports). They do so only where it can help: Linux with glibc 2.26 or later (the
first with tunables), no `glibc.malloc.` tunable in GLIBC_TUNABLES and no MALLOC_ variable
of glibc's (so that `GLIBC_TUNABLES=glibc.malloc.arena_max=8`, `MALLOC_ARENA_MAX=8` or any
other keeps the user's allocator as it is), and only once (RESTARTED: a secure-mode
process, setuid or with file capabilities, has glibc drop the tunables, which would
otherwise restart it forever), and only where this process's command line is the CLI's
own (not a notebook kernel's that runs the module with `%run -m`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

from dcgan_jax import xla_flags  # imports no JAX

MALLOC_PREFIX = "glibc.malloc."
# Far above any step's buffers: glibc trims the heap only when this much lies free at its top.
TRIM_THRESHOLD = 1 << 40
RETAIN_FREED_MEMORY = ("glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}")
HUGE_PAGES = "glibc.malloc.hugetlb=1"
# glibc's older environment variables for malloc's settings (GLIBC_TUNABLES would override them).
MALLOC_VARIABLES = (
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)
RESTARTED = "DCGAN_JAX_ALLOCATOR_RESTARTED"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    """The C library's version as a tuple of ints if it is glibc, else None."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def names_malloc_tunable(tunables: str) -> bool:
    """Whether a GLIBC_TUNABLES value sets any of glibc's malloc tunables."""
    return any(item.startswith(MALLOC_PREFIX) for item in tunables.split(":"))


def users_allocator(environ: Mapping[str, str]) -> bool:
    """Whether the user set malloc's settings: a `glibc.malloc.` tunable or a MALLOC_ variable."""
    return names_malloc_tunable(environ.get("GLIBC_TUNABLES", "")) or any(
        name in environ for name in MALLOC_VARIABLES
    )


def tunables_to_add(
    environ: Mapping[str, str],
    system: str,
    libc: tuple[int, ...] | None,
    thp_mode: str | None,
    cpu_only: bool,
) -> list[str]:
    """The tunables a restart would add on this host (none: no restart). Freed memory is
    kept only where JAX computes on the CPU alone (`cpu_only`): with an accelerator the
    step's buffers are not the host's."""
    if (
        RESTARTED in environ
        or system != "Linux"
        or libc is None
        or libc < (2, 26)
        or users_allocator(environ)
    ):
        return []
    added = list(RETAIN_FREED_MEMORY) if cpu_only else []
    # With `always` the kernel uses huge pages already; with `never` it cannot.
    if libc >= (2, 35) and thp_mode == "madvise":
        added.append(HUGE_PAGES)
    return added


def tunables_to_add_here(environ: Mapping[str, str] = os.environ) -> list[str]:
    """`tunables_to_add` for this host and `environ`."""
    return tunables_to_add(
        environ,
        platform.system(),
        glibc_version(),
        transparent_huge_page_mode(),
        xla_flags.cpu_only(environ),
    )


def retains_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether GLIBC_TUNABLES holds `RETAIN_FREED_MEMORY` exactly (as the restart adds them,
    or as a user may set them): whether a process started with this environment keeps
    freed memory. It reads the environment, not what glibc read when this process started
    (tests/conftest.py sets it for its subprocesses)."""
    return set(RETAIN_FREED_MEMORY) <= set(environ.get("GLIBC_TUNABLES", "").split(":"))


def dispatch_in_calling_thread(environ: Mapping[str, str] = os.environ) -> None:
    """Has JAX run CPU computations in the calling thread where the heap keeps freed memory,
    so that XLA allocates the step's buffers from the main thread's heap, the one that
    keeps them (module docstring). Call it before JAX creates its CPU client (the first
    `jax.devices()` or computation): JAX reads the option then. Measured on the
    2-core Intel Xeon VM (README "Speed"): steps as fast as with one arena for all threads
    (cifar 156-166 against 149-166 images/s, celeba 111-116 against 113-115), compilation
    as fast as with glibc's defaults. JAX's option covers computations on one device:
    where the CPU is split into several (`--xla_force_host_platform_device_count`), XLA's
    threads allocate the step's buffers again, and the largest are mapped every step."""
    if retains_freed_memory(environ):
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)


def with_tunables(tunables: str, added: list[str]) -> str:
    """A GLIBC_TUNABLES value: `tunables` (colon-separated name=value pairs), then `added`."""
    return ":".join(filter(None, [tunables, *added]))


def runs_as_its_own_command(argv: list[str], orig_argv: list[str] | None) -> bool:
    """Whether the interpreter's command line (`orig_argv`) ends with this program's
    arguments (`argv[1:]`), as it does for `python [flags] -m module args`, `python script
    args` and `python -c code args`; not inside a host such as a notebook kernel."""
    if not orig_argv:
        return False
    args = argv[1:]
    return len(orig_argv) > len(args) and orig_argv[len(orig_argv) - len(args) :] == args


def reexec_with_tunables() -> None:
    """Replaces this process by the same command with `tunables_to_add_here()` appended to
    GLIBC_TUNABLES where there are any; returns otherwise, also if the restart fails.
    Call it first thing in a `__main__` block: the work done before it is done twice."""
    orig_argv = getattr(sys, "orig_argv", None)
    if (
        not sys.executable
        or not runs_as_its_own_command(sys.argv, orig_argv)
        or "IPython" in sys.modules
    ):
        return
    added = tunables_to_add_here()
    if not added:
        return
    env = dict(
        os.environ,
        GLIBC_TUNABLES=with_tunables(os.environ.get("GLIBC_TUNABLES", ""), added),
        **{RESTARTED: "1"},
    )
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, [sys.executable, *orig_argv[1:]], env)
    except OSError:
        return  # glibc's defaults, as without this module
