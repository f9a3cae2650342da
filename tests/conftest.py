"""Test setup: two fake CPU devices, so the pmap code paths run on any machine."""

import atexit
import contextlib
import os
import shutil
import tempfile

from dcgan_jax import allocator, xla_flags  # import no JAX
from tests.commands import DEVICE_COUNT_FLAG  # imports no JAX

# Must happen before jax is imported anywhere. The CLIs' default XLA flags too: the
# in-process tests run as the CLIs do, and their compiled programs stay cache hits for the
# CLI subprocesses (XLA_FLAGS is part of the compilation cache's key).
# JAX_PLATFORMS first: the flags for a CPU-only process (xla_flags.cpu_only), as the CLI
# subprocesses get them (tests/commands.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = xla_flags.with_defaults(
    os.environ.get("XLA_FLAGS", "") + " " + DEVICE_COUNT_FLAG
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the whole session, inherited by the subprocesses
# the tests start: the same small programs are compiled once, not in every process.
# Removed when the process that made it exits (after the workers and subprocesses that
# inherited it): one session's programs are of no use to the next.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="dcgan_jax_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Under pytest-xdist every worker (and its subprocesses) would start PyTorch's OpenMP pool
# with a thread per core beside the other worker's: one thread each. Whole suite, two
# workers on the 2-core Zen 5 VM, alternating runs: 432 s, 391 s with it, 403 s.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Most tests compile far more than they compute (XLA's compilation was 297 s of the suite's
# 664 s of test time): they compile with most of XLA's optimizations off, which halves that
# and leaves the numbers within the float32 rounding the bounds allow (LLVM at -O0 instead
# of -O3; the HLO passes, and so each program's operations and their order, are the same).
# The few tests that compute more than they compile are marked `optimized` (and fixtures
# use `optimized_compilation`). JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs every test at the
# users' optimization level; CI runs the numerical tests that way too (.ci/run).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# The CLIs restart themselves under glibc's allocator tunables where they help (allocator.py);
# set here, the CLI subprocesses of the tests run under them as users' do, started once. So
# do the pytest-xdist workers, started after this; with -n 0 the tests in this process do not.
if added_tunables := allocator.tunables_to_add_here():
    os.environ["GLIBC_TUNABLES"] = allocator.with_tunables(
        os.environ.get("GLIBC_TUNABLES", ""), added_tunables
    )

# Only now, with the environment above in place.
import jax
import pytest

from dcgan_jax import default_config

allocator.dispatch_in_calling_thread()  # as the CLIs do under those tunables

NUM_DEVICES = 2


@contextlib.contextmanager
def optimized_compilation():
    """Compile at the users' optimization level inside (in this process and in the
    subprocesses started inside): for code that computes more than it compiles, which
    unoptimized takes 1.5-2.5x as long (the digits classifier's training, Inception). A
    program this process compiled before, unoptimized, is reused as it is (the flag is not
    part of jit's cache key): only the speed differs."""
    previous = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"]
    previous_here = jax.config.read("jax_disable_most_optimizations")
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = previous
        jax.config.update("jax_disable_most_optimizations", previous_here)


@pytest.fixture(autouse=True)
def _optimized_when_marked(request):
    marked = request.node.get_closest_marker("optimized")
    with optimized_compilation() if marked else contextlib.nullcontext():
        yield


def tiny_config(**overrides):
    """A 16x16 digits config small enough to train in seconds."""
    config = default_config.get_config()
    config.dataset = "digits"
    config.image_size = 16
    config.channels = 1
    config.z_dim = 8
    config.g_features = 8
    config.d_features = 8
    config.batch_size = 8
    config.num_train_steps = 4
    config.shuffle_buffer_size = 2000
    config.log_every_steps = 2
    config.sample_every_steps = 2
    config.num_samples = 4
    config.checkpoint_every_steps = 2
    config.max_checkpoints = 2
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed for each run of a test (so that repeated runs explore new
    weights and inputs), or DCGAN_TEST_SEED when set. A failing test reports its seed and
    the command that replays it (see pytest_runtest_makereport)."""
    import numpy as np

    value = os.environ.get("DCGAN_TEST_SEED")
    value = int(value) if value else int(np.random.SeedSequence().entropy % 2**31)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def _repeat_index(request) -> int:
    return request.param


def pytest_generate_tests(metafunc):
    """DCGAN_TEST_REPEAT=N runs every test that takes a fresh `seed` N times (N seeds):
    DCGAN_TEST_REPEAT=200 python -m pytest tests/test_torch_parity.py -k float32"""
    repeat = int(os.environ.get("DCGAN_TEST_REPEAT", "1"))
    if repeat > 1 and "seed" in metafunc.fixturenames:
        metafunc.fixturenames.append("_repeat_index")
        metafunc.parametrize("_repeat_index", range(repeat), indirect=True, ids=lambda i: f"run{i}")


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """In long repeated runs (DCGAN_TEST_REPEAT), every test's compiled programs would stay
    cached: thousands of XLA:CPU executables exhaust the process's memory mappings and a
    later compilation crashes. Clearing JAX's caches every 25 tests avoids that."""
    yield
    _TESTS_RUN[0] += 1
    if int(os.environ.get("DCGAN_TEST_REPEAT", "1")) > 1 and _TESTS_RUN[0] % 25 == 0:
        from dcgan_jax import train

        train.forget_compiled_programs()


_TESTS_RUN = [0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(
            (
                "replay with the same random seed",
                f"DCGAN_TEST_SEED={seeds[0]} python -m pytest '{item.nodeid}'",
            )
        )


@pytest.fixture(scope="session", autouse=True)
def _check_devices():
    # The CPU's devices, not the default backend's: the parity tests also run with a GPU as
    # the default device (JAX_PLATFORMS=cuda,cpu; README, "Parity on the GPU").
    assert len(jax.devices("cpu")) == NUM_DEVICES, "XLA_FLAGS was set after jax was imported"
