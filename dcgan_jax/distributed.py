"""Joining a multi-process run (several hosts, or several processes per host) before any
other JAX call: launcher detection, `jax.distributed` set-up, and a warning for GPUs that
such a launch would leave idle. `python -m dcgan_jax.train` calls `initialize`."""

from __future__ import annotations

import os
import sys

import jax

from dcgan_jax.validation import UserError, describe_error


def detect_cluster() -> str | None:
    """The multi-process launcher this process runs under, if any (by its environment)."""
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return "TPU pod slice"
    return None


def initialize(
    mode: str,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    heartbeat_timeout_s: int,
) -> None:
    """Joins a multi-process run through jax.distributed, before any other JAX call.

    mode "auto" joins when --coordinator_address is given or a launcher is detected
    (SLURM, Open MPI, TPU pod slice), "on" always (JAX's own detection fills in what is
    not given), "off" never. A process that stops sending heartbeats for
    `heartbeat_timeout_s` seconds is declared dead and the others stop.
    """
    explicit = coordinator_address is not None
    if (num_processes is not None or process_id is not None) and not explicit:
        raise UserError(
            "--num_processes and --process_id need --coordinator_address=HOST:PORT "
            "(the address of process 0)."
        )
    cluster = detect_cluster()
    if mode == "off" or (mode == "auto" and not explicit and cluster is None):
        return
    # CPU processes exchange gradients with gloo (GPUs and TPUs use their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except Exception as e:
        raise UserError(
            f"could not join the multi-process run ({cluster or coordinator_address or 'auto'}"
            f"; {describe_error(e)}). Fix: "
            "start every process with the same --coordinator_address (process 0's HOST:PORT, "
            "reachable from all) and --num_processes, and a distinct --process_id."
        ) from e
    if jax.process_index() == 0:
        print(
            f"Process {jax.process_index()} of {jax.process_count()} ({cluster or 'explicit'}); "
            f"{jax.device_count()} devices in all, {jax.local_device_count()} here.",
            flush=True,
        )
    warning = unused_gpus_warning(os.environ, jax.local_device_count())
    if warning:
        print(warning, file=sys.stderr, flush=True)


def unused_gpus_warning(env, local_devices: int) -> str | None:
    """A warning when a SLURM or Open MPI process holds fewer GPUs than its node's share.

    JAX's cluster detection gives each process the one GPU of its local rank, so a node
    with several GPUs needs one process (task) per GPU; with fewer, GPUs sit idle.
    """
    gpus = env.get("SLURM_GPUS_ON_NODE")
    tasks = env.get("SLURM_NTASKS_PER_NODE") or env.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if not (gpus and tasks and gpus.isdigit() and tasks.split("(")[0].isdigit()):
        return None
    gpus, tasks = int(gpus), int(tasks.split("(")[0])
    if tasks * local_devices >= gpus:
        return None
    return (
        f"warning: this node has {gpus} GPUs but runs {tasks} process(es) with "
        f"{local_devices} GPU(s) each, so {gpus - tasks * local_devices} stay idle. Fix: one "
        f"process per GPU, e.g. srun --ntasks-per-node={gpus} --gpus-per-task=1."
    )
