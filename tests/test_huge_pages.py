"""The CLIs' restart under glibc's huge-page tunable (dcgan_jax/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from dcgan_jax import huge_pages

LINUX_GLIBC = dict(system="Linux", libc=(2, 36), thp_mode="madvise")


@pytest.mark.parametrize(
    "environ, host, expected",
    [
        ({}, LINUX_GLIBC, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, LINUX_GLIBC, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, LINUX_GLIBC, False),  # the opt-out
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}, LINUX_GLIBC, False),
        ({}, dict(LINUX_GLIBC, libc=(2, 35)), True),
        ({}, dict(LINUX_GLIBC, libc=(2, 34)), False),  # glibc without the tunable
        ({}, dict(LINUX_GLIBC, libc=None), False),  # musl
        ({}, dict(LINUX_GLIBC, thp_mode="always"), False),  # the kernel uses them already
        ({}, dict(LINUX_GLIBC, thp_mode="never"), False),
        ({}, dict(LINUX_GLIBC, thp_mode=None), False),
        ({}, dict(LINUX_GLIBC, system="Darwin"), False),
    ],
)
def test_restarts_only_where_the_tunable_changes_something(environ, host, expected):
    assert huge_pages.should_reexec(environ, **host) is expected


def test_tunable_is_appended_to_the_users_tunables():
    assert huge_pages.with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert (
        huge_pages.with_huge_pages("glibc.malloc.arena_max=2")
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )
    assert not huge_pages.names_tunable("glibc.malloc.hugetlb_other=1")


def test_reads_the_kernels_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.transparent_huge_page_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert huge_pages.transparent_huge_page_mode(str(path)) == "always"
    assert huge_pages.transparent_huge_page_mode(str(tmp_path / "missing")) is None


# The child reports its arguments, its GLIBC_TUNABLES and how much of a 256 MiB block from
# malloc that it fills lies on transparent huge pages (AnonHugePages in
# /proc/self/smaps_rollup). Straight from malloc: NumPy advises huge pages for its own
# large arrays.
CHILD = """
import sys
from dcgan_jax import huge_pages
huge_pages.reexec_with_huge_pages()
import ctypes, os
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(256 << 20)
ctypes.memset(block, 1, 256 << 20)
huge_kib = 0
if os.path.exists("/proc/self/smaps_rollup"):
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            huge_kib = int(line.split()[1])
print(sys.argv[1:], repr(os.environ.get("GLIBC_TUNABLES")), huge_kib)
"""


def run_child(tunables):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "a", "--b=1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return out[:-2], eval(out[-2]), int(out[-1])


def test_restart_keeps_the_command_and_puts_large_allocations_on_huge_pages():
    applies = huge_pages.should_reexec_here({})
    args, tunables, huge_kib = run_child(None)
    assert args == ["['a',", "'--b=1']"]
    if not applies:
        assert tunables is None
        pytest.skip("this host's glibc or kernel has no use for the tunable")
    assert tunables == "glibc.malloc.hugetlb=1"
    assert huge_kib >= 128 << 10  # at least half of the array on 2 MiB pages

    # Opted out: started once, as the user asked, and on 4 KiB pages.
    args, tunables, huge_kib = run_child("glibc.malloc.hugetlb=0")
    assert args == ["['a',", "'--b=1']"] and tunables == "glibc.malloc.hugetlb=0"
    assert huge_kib < 128 << 10
