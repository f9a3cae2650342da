"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives) train like one process."""

import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from dcgan_jax import checkpointing, train
from tests import commands

TINY = {
    "image_size": 16,
    "z_dim": 8,
    "g_features": 8,
    "d_features": 8,
    "batch_size": 8,
    "log_every_steps": 2,
    "sample_every_steps": 2,
    "checkpoint_every_steps": 2,
    "num_samples": 4,
    # Each process keeps its rows of the one global stream: the same batches as 1 process.
    "input_sharding": "global_batches",
}


def _command(workdir, num_steps, *extra):
    return commands.train_command(workdir, *extra, **TINY, num_train_steps=num_steps)


def _env():
    return commands.environment()  # 2 CPU devices per process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(workdir, num_steps, *extra):
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                num_steps,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]


def _finish(processes, timeout=300):
    outputs = [p.communicate(timeout=timeout) for p in processes]
    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, f"{out}\n{err[-3000:]}"
    return outputs


def _assert_close(a, b):
    leaves_a, leaves_b = (checkpointing.jax.tree_util.tree_leaves(x) for x in (a, b))
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        # Same math; BatchNorm statistics are summed over 4 devices instead of 2.
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_together(tmp_path):
    # The one-process reference runs in this process (the same 2 CPU devices and config as
    # the CLI's): the process boundary is what the pair tests, not what the reference does.
    single = tmp_path / "single"
    train.train_and_evaluate(commands.digits_config(**TINY, num_train_steps=6), str(single))
    _, expected_4 = checkpointing.load_checkpoint(str(single), step=4)
    _, expected_6 = checkpointing.load_checkpoint(str(single), step=6)

    pair = tmp_path / "pair"
    (out0, _), (out1, _) = _finish(_start_pair(pair, 4))
    assert "Process 0 of 2 (explicit); 4 devices in all, 2 here." in out0
    assert "step 4/4" in out0 and "step" not in out1  # only process 0 logs (gloo chats)
    _, state_4 = checkpointing.load_checkpoint(str(pair))
    assert int(state_4.step) == 4
    _assert_close(state_4, expected_4)
    assert sorted(os.listdir(pair / "samples")) == ["step_000002.png", "step_000004.png"]

    (out0, _), _ = _finish(_start_pair(pair, 6))
    assert "Resumed from checkpoint at step 4" in out0
    _, state_6 = checkpointing.load_checkpoint(str(pair))
    assert int(state_6.step) == 6
    _assert_close(state_6, expected_6)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_a_message(tmp_path):
    processes = _start_pair(tmp_path / "run", 100_000, "--heartbeat_s=10")
    survivor, victim = processes
    deadline = time.monotonic() + 180
    for line in survivor.stdout:
        if line.startswith("First step") or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    started = time.monotonic()
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode != 0
    assert time.monotonic() - started < 90  # stopped, not hung
    # Our message when the failure surfaces in a collective (the usual case), or JAX's own
    # when its heartbeat check ends the process first; never a hang.
    ours = "another process of this run has probably died or been killed"
    jaxs = "the JAX distributed service detected fatal errors. This most likely indicates"
    # (A fatal error's thread stacks and module list would fill the message's tail.)
    assert ours in err or jaxs in err, err.split("\nThread 0x")[0][-3000:]
