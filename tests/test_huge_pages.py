"""The CLIs' restart under glibc's huge-page tunable (dcgan_jax/huge_pages.py)."""

import json
import os
import subprocess
import sys

import pytest

from dcgan_jax import huge_pages
from tests.commands import REPO

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
        ({huge_pages.RESTARTED: "1"}, LINUX_GLIBC, False),  # glibc dropped it: no loop
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
    assert not huge_pages.names_tunable("x=1:") and not huge_pages.names_tunable(":")
    assert huge_pages.names_tunable("a=b=c:glibc.malloc.hugetlb=0")
    assert huge_pages.names_tunable("glibc.malloc.hugetlb")  # glibc ignores it: no restart


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
    assert huge_pages.runs_as_its_own_command(argv, orig_argv) is expected


def test_reads_the_kernels_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.transparent_huge_page_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert huge_pages.transparent_huge_page_mode(str(path)) == "always"
    assert huge_pages.transparent_huge_page_mode(str(tmp_path / "missing")) is None


# The child reports its arguments, interpreter flags and environment after the restart,
# and whether the kernel may back a 64 MiB block from malloc with transparent huge pages
# (THPeligible of the block's mapping in /proc/self/smaps: glibc advised it; unlike the
# pages actually used, this does not depend on free memory). Straight from malloc: NumPy
# advises huge pages for its own large arrays.
CHILD = """
import json, os, sys
from dcgan_jax import huge_pages
huge_pages.reexec_with_huge_pages()
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
eligible = None
if os.path.exists("/proc/self/smaps"):
    inside = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            start, end = (int(a, 16) for a in fields[0].split("-"))
            inside = start <= block < end
        elif inside and fields[0] == "THPeligible:":
            eligible = fields[1] == "1"
print(json.dumps({
    "argv": sys.argv[1:],
    "dev_mode": sys.flags.dev_mode,
    "tunables": os.environ.get("GLIBC_TUNABLES"),
    "restarted": os.environ.get(huge_pages.RESTARTED),
    "eligible": eligible,
}))
"""


def run_child(tmp_path, tunables, *python_flags):
    """The child as `python [flags] -m child a --b=1`, from another directory."""
    (tmp_path / "huge_pages_child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.RESTARTED)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO, env.get("PYTHONPATH", "")])
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run(
        [sys.executable, *python_flags, "-m", "huge_pages_child", "a", "--b=1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_restart_keeps_the_command_and_advises_huge_pages(tmp_path):
    applies = huge_pages.should_reexec_here({})
    child = run_child(tmp_path, "glibc.malloc.arena_max=2", "-X", "dev")
    assert child["argv"] == ["a", "--b=1"] and child["dev_mode"]
    if not applies:
        assert child["tunables"] == "glibc.malloc.arena_max=2" and child["restarted"] is None
        pytest.skip("this host's glibc or kernel has no use for the tunable")
    # Restarted once, the user's tunables kept, and the large block may go on huge pages.
    assert child["tunables"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert child["restarted"] == "1"
    if child["eligible"] is None:
        pytest.skip("this kernel's smaps has no THPeligible field")
    assert child["eligible"]

    # Opted out: started once, as the user asked, and not eligible (THP in madvise mode).
    child = run_child(tmp_path, "glibc.malloc.hugetlb=0")
    assert child["argv"] == ["a", "--b=1"]
    assert child["tunables"] == "glibc.malloc.hugetlb=0" and child["restarted"] is None
    assert child["eligible"] is False
