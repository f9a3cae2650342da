"""Kills a real training process with SIGKILL at random moments, restarts it each time, and
checks that the finished run equals an uninterrupted one bit for bit.

    python -m tests.kill_loop --kills 20 [--seed 0] [--workdir /tmp/kill_loop]

Each round starts `python -m dcgan_jax.train` on a tiny digits model that writes a
checkpoint after every step (so many kills land inside a checkpoint write) and kills it
either at a random moment after launch (start-up, compilation, restore) or at a random
moment after its first training step. `tests/test_reliability.py` runs a reduced count.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from tests import commands


def train_command(
    workdir: str, num_steps: int, *extra: str, checkpoint_every_steps: int = 1
) -> list[str]:
    """A tiny digits run that checkpoints after every step (or `checkpoint_every_steps`),
    with the command-line flags `extra`."""
    return commands.train_command(
        workdir,
        *extra,
        image_size=16,
        z_dim=8,
        g_features=8,
        d_features=8,
        batch_size=8,
        num_train_steps=num_steps,
        checkpoint_every_steps=checkpoint_every_steps,
        max_checkpoints=2,
        log_every_steps=25,
        sample_every_steps=10 * num_steps,
        num_samples=4,
    )


def _environment(cache_dir: str) -> dict[str, str]:
    # Restarts reuse compiled programs: the test session's cache when there is one (the
    # same tiny model is compiled by other tests), else one of the loop's own.
    return commands.environment(
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", cache_dir)
    )


def _kill_once(command, env, rng: random.Random, workdir: str) -> dict:
    """Starts training, SIGKILLs it at a random moment; returns what the kill hit."""
    partial_pattern = os.path.join(workdir, "checkpoints", "*tmp*")
    partial_before = set(glob.glob(partial_pattern))  # left by the previous round
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    trained = threading.Event()
    output = []

    def read():
        for line in process.stdout:
            output.append(line)
            if line.startswith("First step"):
                trained.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if rng.random() < 0.25:
        phase = "start-up"
        time.sleep(rng.uniform(0.0, 8.0))
    else:
        phase = "training"
        trained.wait(timeout=120)
        time.sleep(rng.uniform(0.0, 1.5))
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    process.wait()
    reader.join(timeout=10)
    partial = set(glob.glob(partial_pattern)) - partial_before
    if finished and process.returncode != 0:
        raise RuntimeError(f"training failed before the kill:\n{''.join(output)[-3000:]}")
    return {"phase": phase, "finished": finished, "partial_checkpoint": bool(partial)}


def run(kills: int, seed: int, root: str, num_steps: int | None = None) -> dict:
    """Runs the kill loop in `root`; returns counts. Raises AssertionError on a mismatch."""
    from dcgan_jax import checkpointing

    num_steps = num_steps or 10 * kills + 40  # a kill after the first step costs ~5 steps
    env = _environment(os.path.join(root, "xla_cache"))
    reference, killed = os.path.join(root, "uninterrupted"), os.path.join(root, "killed")
    for workdir in (reference, killed):
        shutil.rmtree(workdir, ignore_errors=True)
    # The reference checkpoints only its final state (one write instead of one per step):
    # how often a run checkpoints must not change what it computes.
    subprocess.run(
        train_command(reference, num_steps, checkpoint_every_steps=num_steps),
        env=env,
        check=True,
        capture_output=True,
    )

    rng = random.Random(seed)
    rounds = []
    while sum(not r["finished"] for r in rounds) < kills:
        rounds.append(_kill_once(train_command(killed, num_steps), env, rng, killed))
        if rounds[-1]["finished"]:
            raise AssertionError(
                f"the run finished after {len(rounds)} rounds; raise num_steps ({num_steps})"
            )
    # The last restart is not killed: it needs no checkpoint after every step (the interval
    # is not part of the run's arithmetic, and each write costs more than a tiny step).
    final = subprocess.run(
        train_command(killed, num_steps, checkpoint_every_steps=num_steps),
        env=env,
        capture_output=True,
        text=True,
    )
    if final.returncode != 0:
        raise AssertionError(f"the final restart failed:\n{final.stdout[-2000:]}{final.stderr}")

    _, expected = checkpointing.load_checkpoint(reference)
    _, actual = checkpointing.load_checkpoint(killed)
    assert int(actual.step) == int(expected.step) == num_steps
    assert checkpointing.state_digest(actual) == checkpointing.state_digest(expected), (
        "the killed-and-restarted run differs from the uninterrupted one"
    )
    return {
        "kills": kills,
        "steps": num_steps,
        "killed_in_start_up": sum(r["phase"] == "start-up" for r in rounds),
        "killed_while_training": sum(r["phase"] == "training" for r in rounds),
        "killed_during_checkpoint_write": sum(r["partial_checkpoint"] for r in rounds),
        "damaged_steps_moved_aside": len(
            glob.glob(os.path.join(killed, "checkpoints_damaged", "*"))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="kill_loop_")
    started = time.perf_counter()
    counts = run(args.kills, args.seed, root)
    print(
        f"{counts['kills']} SIGKILLs ({counts['killed_in_start_up']} during start-up, "
        f"{counts['killed_while_training']} while training, "
        f"{counts['killed_during_checkpoint_write']} left a checkpoint half-written); "
        f"{counts['damaged_steps_moved_aside']} damaged steps moved aside; the restarted run's "
        f"{counts['steps']}-step state equals the uninterrupted run's bit for bit "
        f"({time.perf_counter() - started:.0f} s)."
    )


if __name__ == "__main__":
    main()
