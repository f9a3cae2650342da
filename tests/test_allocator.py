"""The CLIs' restart under glibc's allocator tunables (dcgan_jax/allocator.py)."""

import json
import os
import subprocess
import sys

import pytest

from dcgan_jax import allocator
from tests.commands import REPO

LINUX_GLIBC = dict(system="Linux", libc=(2, 36), thp_mode="madvise", cpu_only=True)
RETAIN = list(allocator.RETAIN_FREED_MEMORY)
ALL = [*RETAIN, allocator.HUGE_PAGES]


@pytest.mark.parametrize(
    "environ, host, expected",
    [
        ({}, LINUX_GLIBC, ALL),
        ({"GLIBC_TUNABLES": "glibc.elision.enable=0"}, LINUX_GLIBC, ALL),
        # Any malloc tunable of the user's: the user's allocator, as it is (the opt-out).
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, LINUX_GLIBC, []),
        ({"GLIBC_TUNABLES": "glibc.elision.enable=0:glibc.malloc.arena_max=8"}, LINUX_GLIBC, []),
        ({}, dict(LINUX_GLIBC, libc=(2, 35)), ALL),
        ({}, dict(LINUX_GLIBC, libc=(2, 34)), RETAIN),  # no huge-page tunable yet
        ({}, dict(LINUX_GLIBC, libc=(2, 26)), RETAIN),
        ({}, dict(LINUX_GLIBC, libc=(2, 25)), []),  # no tunables at all
        ({}, dict(LINUX_GLIBC, libc=None), []),  # musl
        ({}, dict(LINUX_GLIBC, thp_mode="always"), RETAIN),  # the kernel uses them already
        ({}, dict(LINUX_GLIBC, thp_mode="never"), RETAIN),
        ({}, dict(LINUX_GLIBC, thp_mode=None), RETAIN),
        ({}, dict(LINUX_GLIBC, system="Darwin"), []),
        # An accelerator: the step's buffers are its own; huge pages for the host's.
        ({}, dict(LINUX_GLIBC, cpu_only=False), [allocator.HUGE_PAGES]),
        ({}, dict(LINUX_GLIBC, cpu_only=False, thp_mode="always"), []),
        ({allocator.RESTARTED: "1"}, LINUX_GLIBC, []),  # glibc dropped them: no loop
        # glibc's older names for the same settings: the user's allocator too.
        ({"MALLOC_ARENA_MAX": "4"}, LINUX_GLIBC, []),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, LINUX_GLIBC, []),
    ],
)
def test_adds_only_the_tunables_that_change_something(environ, host, expected):
    assert allocator.tunables_to_add(environ, **host) == expected


def test_tunables_are_appended_to_the_users_tunables():
    assert allocator.with_tunables("", ["a=1", "b=2"]) == "a=1:b=2"
    assert allocator.with_tunables("x=0", ["a=1"]) == "x=0:a=1"
    assert not allocator.names_malloc_tunable("glibc.mallocx=1")
    assert not allocator.names_malloc_tunable("x=1:") and not allocator.names_malloc_tunable(":")
    assert allocator.names_malloc_tunable("a=b=c:glibc.malloc.tcache_count=0")
    assert allocator.names_malloc_tunable("glibc.malloc.hugetlb")  # a malformed one counts


@pytest.mark.parametrize(
    "argv, orig_argv, expected",
    [
        (["/x/train.py", "--config", "c"], ["py", "-m", "dcgan_jax.train", "--config", "c"], True),
        (["/x/train.py"], ["py", "-X", "dev", "-m", "dcgan_jax.train"], True),
        (["-c", "a"], ["py", "-c", "code", "a"], True),
        # `%run -m dcgan_jax.train --config c` in a notebook kernel: not the kernel's command.
        (["/x/train.py", "--config", "c"], ["py", "-m", "ipykernel_launcher", "-f", "k"], False),
        (["/x/train.py"], None, False),
        (["/x/train.py"], [], False),
    ],
)
def test_restarts_only_its_own_command_line(argv, orig_argv, expected):
    assert allocator.runs_as_its_own_command(argv, orig_argv) is expected


def test_reads_the_kernels_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert allocator.transparent_huge_page_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert allocator.transparent_huge_page_mode(str(path)) == "always"
    assert allocator.transparent_huge_page_mode(str(tmp_path / "missing")) is None


# The child reports its arguments, interpreter flags and environment after the restart, and
# what happens to a 96 MiB block that the main thread (where XLA allocates a step's buffers
# under the CLIs' settings, see the JAX child below) allocates, writes and frees, and then
# allocates and writes again, as every step does with its temporaries: the page faults of
# the second write (none where the freed memory stayed in the process; one per page where it
# went back to the kernel), and how much of the block the kernel may back with transparent
# huge pages (THPeligible of the mappings it spans in /proc/self/smaps: glibc advised them,
# except for heap extensions under 2 MiB; unlike the pages actually used, this does not
# depend on free memory). Straight from malloc: NumPy advises huge pages for its own large
# arrays.
CHILD = """
import ctypes, json, os, resource, sys
from dcgan_jax import allocator
allocator.reexec_with_tunables()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 96 << 20
found = {}

def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

def step(name):
    block = libc.malloc(SIZE)
    before = faults()
    ctypes.memset(block, 1, SIZE)
    found[name] = faults() - before
    eligible, overlap, reported = 0, 0, False
    if os.path.exists("/proc/self/smaps"):
        for line in open("/proc/self/smaps"):
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                start, end = (int(a, 16) for a in fields[0].split("-"))
                overlap = max(0, min(end, block + SIZE) - max(start, block))
            elif fields[0] == "THPeligible:":
                reported = True
                eligible += overlap if fields[1] == "1" else 0
    found["eligible"] = eligible / SIZE if reported else None  # None: no such field
    libc.free(block)

for name in ("first_faults", "second_faults"):
    step(name)
print(json.dumps({
    "argv": sys.argv[1:],
    "dev_mode": sys.flags.dev_mode,
    "tunables": os.environ.get("GLIBC_TUNABLES"),
    "restarted": os.environ.get(allocator.RESTARTED),
    "first_faults": found["first_faults"],
    "second_faults": found["second_faults"],
    "eligible": found["eligible"],
}))
"""


def child_environ(tunables):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.RESTARTED)}
    return env if tunables is None else {**env, "GLIBC_TUNABLES": tunables}


def run_module(tmp_path, name, source, env, python_flags=(), args=()):
    """`source` as module `name`, `python [flags] -m name args` from another directory; its
    last line of output, as JSON."""
    (tmp_path / f"{name}.py").write_text(source)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO, env.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, *python_flags, "-m", name, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(tmp_path, tunables, *python_flags):
    """The child as `python [flags] -m child a --b=1`, from another directory."""
    env = child_environ(tunables)
    return run_module(tmp_path, "allocator_child", CHILD, env, python_flags, ("a", "--b=1"))


def test_restart_keeps_the_command_and_freed_memory(tmp_path):
    users = "glibc.elision.enable=0"  # not a malloc tunable: kept, and the restart happens
    added = allocator.tunables_to_add_here(child_environ(users))
    child = run_child(tmp_path, users, "-X", "dev")
    assert child["argv"] == ["a", "--b=1"] and child["dev_mode"]
    if not added:
        assert child["tunables"] == users and child["restarted"] is None
        pytest.skip("this host's C library has no allocator tunables")
    # Restarted once, the user's tunables kept; the second step's block is the first one's
    # memory, written without a page fault (the block's 24,576 pages of 4 KiB were faulted
    # in by the first write), and it may lie on huge pages where that tunable was added.
    assert child["tunables"] == ":".join([users, *added])
    assert child["restarted"] == "1"
    assert child["first_faults"] > 0
    if set(allocator.RETAIN_FREED_MEMORY) <= set(added):
        assert child["second_faults"] < 64
    if allocator.HUGE_PAGES in added and child["eligible"] is not None:
        assert child["eligible"] > 0.9

    # Opted out: started once, as the user asked; glibc returns the freed block to the
    # kernel, and writing it again faults every page in anew: one fault per 4 KiB page in
    # madvise mode, where the block is not advised (in `always` mode, one per 2 MiB page).
    child = run_child(tmp_path, "glibc.malloc.hugetlb=0")
    assert child["argv"] == ["a", "--b=1"]
    assert child["tunables"] == "glibc.malloc.hugetlb=0" and child["restarted"] is None
    if allocator.transparent_huge_page_mode() == "madvise":
        assert child["second_faults"] >= (96 << 20) // os.sysconf("SC_PAGESIZE") // 2
        if child["eligible"] is not None:
            assert child["eligible"] == 0
    else:
        assert child["second_faults"] >= (96 << 20) // (2 << 20) // 2


# XLA itself under the CLIs' settings: a jitted computation with a 96 MiB temporary (the
# first product, which the second reads whole) runs five times; the page faults of the
# last run (all threads), and the async-dispatch option the CLI's setup left in force.
JAX_CHILD = """
import json, os, resource, sys
from dcgan_jax import allocator
allocator.reexec_with_tunables()
if not os.environ.get("ASYNC"):
    allocator.dispatch_in_calling_thread()
import jax, jax.numpy as jnp

a = jnp.ones((12288, 64), jnp.float32)
b = jnp.ones((64, 2048), jnp.float32)
step = jax.jit(lambda a, b: (a @ b) @ b.T)
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(a, b).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({
    "faults": faults,
    "async_dispatch": jax.config.read("jax_cpu_enable_async_dispatch"),
    "retains": allocator.retains_freed_memory(),
}))
"""


def run_jax_child(tmp_path, tunables, **environ):
    env = {**child_environ(tunables), **environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device: JAX's option is for single-device programs
    return run_module(tmp_path, "allocator_jax_child", JAX_CHILD, env)


def test_xla_reuses_a_steps_memory_under_the_clis_settings(tmp_path):
    if not set(allocator.RETAIN_FREED_MEMORY) <= set(allocator.tunables_to_add_here({})):
        pytest.skip("the CLIs keep glibc's defaults on this host")
    pages = (96 << 20) // os.sysconf("SC_PAGESIZE")
    # As the CLIs run: computations in the calling thread, whose heap keeps the freed 96 MiB
    # for the next run: (almost) no page faults.
    child = run_jax_child(tmp_path, None)
    assert child["retains"] and child["async_dispatch"] is False
    assert child["faults"] < pages // 100
    # The same tunables with JAX's asynchronous dispatch: XLA's own threads allocate the
    # temporary, from heaps that map (and unmap) every block above 64 MiB: faulted in anew
    # every run (at least one fault per 2 MiB page; glibc advises huge pages for those maps
    # too under `glibc.malloc.hugetlb=1`).
    assert run_jax_child(tmp_path, None, ASYNC="1")["faults"] >= (96 << 20) // (2 << 20) // 2
    # Opted out (glibc's defaults, JAX's asynchronous dispatch): the temporary is mapped
    # afresh in every run, and faulted in anew (4 KiB pages in madvise mode; at least one
    # per 2 MiB page in any mode).
    child = run_jax_child(tmp_path, "glibc.malloc.hugetlb=0")
    assert not child["retains"] and child["async_dispatch"] is True
    assert child["faults"] >= (96 << 20) // (2 << 20) // 2
    if allocator.transparent_huge_page_mode() == "madvise":
        assert child["faults"] >= pages // 2
