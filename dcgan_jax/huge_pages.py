"""Large host allocations on transparent huge pages, for the command-line tools on Linux.

XLA:CPU allocates a step's temporaries and outputs afresh in every step, and glibc serves
allocations above 32 MiB with new memory maps, which the kernel fills in 4 KiB at a time
on first touch: on the 2-core AMD EPYC (Zen 5) VM of README "Speed" a jitted
(18496x256)(256x512) product with its 36 MiB output ran at 189 GFLOP/s instead of 380-480
for the smaller ones. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35 and later) makes
malloc advise transparent huge pages (2 MiB) for the memory it maps: there the JAX step ran
1.00-1.17x as fast (celeba; cifar 1.05-1.13x; the VM's hour moved the gain) with the same
time to the first step.

glibc reads its tunables once, when a process starts, so `train` and `benchmark` start
themselves again with the tunable set (`reexec_with_huge_pages`, called in their `__main__`
before their other imports). They do so only where it can help: Linux, glibc 2.35 or later,
transparent huge pages in `madvise` mode (with `always` the kernel uses them already; with
`never` it cannot), and a GLIBC_TUNABLES that does not name `glibc.malloc.hugetlb` already,
so `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps glibc's default; and only once (RESTARTED:
a secure-mode process, setuid or with file capabilities, has glibc drop the tunable, which
would otherwise restart it forever), and only where this process's command line is the
CLI's own (not a notebook kernel's that runs the module with `%run -m`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
RESTARTED = "DCGAN_JAX_HUGE_PAGES_RESTARTED"
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


def with_huge_pages(tunables: str) -> str:
    """A GLIBC_TUNABLES value: `tunables` (colon-separated name=value pairs) with the
    huge-page tunable appended."""
    return ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))


def names_tunable(tunables: str) -> bool:
    return any(item.split("=", 1)[0] == TUNABLE for item in tunables.split(":"))


def should_reexec(
    environ: Mapping[str, str],
    system: str,
    libc: tuple[int, ...] | None,
    thp_mode: str | None,
) -> bool:
    """Whether restarting with the tunable set changes anything on this host."""
    return (
        RESTARTED not in environ
        and system == "Linux"
        and libc is not None
        and libc >= (2, 35)
        and thp_mode == "madvise"
        and not names_tunable(environ.get("GLIBC_TUNABLES", ""))
    )


def should_reexec_here(environ: Mapping[str, str] = os.environ) -> bool:
    """`should_reexec` for this host and `environ`."""
    return should_reexec(environ, platform.system(), glibc_version(), transparent_huge_page_mode())


def runs_as_its_own_command(argv: list[str], orig_argv: list[str] | None) -> bool:
    """Whether the interpreter's command line (`orig_argv`) ends with this program's
    arguments (`argv[1:]`), as it does for `python [flags] -m module args`, `python script
    args` and `python -c code args`; not inside a host such as a notebook kernel."""
    if not orig_argv:
        return False
    args = argv[1:]
    return len(orig_argv) > len(args) and orig_argv[len(orig_argv) - len(args) :] == args


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command with `glibc.malloc.hugetlb=1` in
    GLIBC_TUNABLES, where `should_reexec`; returns otherwise, also if the restart fails.
    Call it first thing in a `__main__` block: the work done before it is done twice."""
    orig_argv = getattr(sys, "orig_argv", None)
    if (
        not sys.executable
        or not runs_as_its_own_command(sys.argv, orig_argv)
        or "IPython" in sys.modules
        or not should_reexec_here()
    ):
        return
    env = dict(
        os.environ,
        GLIBC_TUNABLES=with_huge_pages(os.environ.get("GLIBC_TUNABLES", "")),
        **{RESTARTED: "1"},
    )
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, [sys.executable, *orig_argv[1:]], env)
    except OSError:
        return  # glibc's default pages, as without this module
