"""Multi-process runs (TPU pod slices, multi-node GPU, several processes on one machine).

One process per host runs the same command. jax.distributed.initialize is called only when the
run is multi-process: with --multi_process, JAX finds the cluster itself (the hosts of a TPU pod
slice, the tasks of a Slurm job step, an Open MPI launch); with --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) the processes are named explicitly, e.g. several on one machine. A single
process needs none of it. Every process computes the same global batch order and reads only its
own rows of each batch; jax.make_array_from_process_local_data assembles the global array.
Process 0 is the "chief": it alone holds the workdir lock, logs progress and writes TensorBoard,
train_log.jsonl, run.json and metrics.json; every process takes part in Orbax checkpointing, so
the workdir must be on a filesystem all hosts share (NFS, Filestore, Lustre).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from bnjax.errors import ConfigError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multi_process: bool = False,
               environ=os.environ) -> bool:
    """Join the multi-process run if this is one; return whether it is. Call before any other
    JAX work. On CPU, cross-process collectives use gloo."""
    coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(environ["JAX_NUM_PROCESSES"])
    if process_id is None and environ.get("JAX_PROCESS_ID"):
        process_id = int(environ["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None
    if not explicit and not multi_process:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ConfigError("--num_processes/--process_id need --coordinator_address "
                              "(host:port of process 0), e.g. --coordinator_address=10.0.0.2:8476")
        return False
    if explicit and (num_processes is None or process_id is None):
        raise ConfigError("--coordinator_address needs --num_processes and --process_id (this "
                          "process's number, 0 .. num_processes - 1)")
    if explicit and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} must be in 0 .. {num_processes - 1} "
                          f"for --num_processes={num_processes}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as error:  # auto-detection found no cluster
        raise ConfigError(f"--multi_process: {str(error).rstrip('.')}. Outside a TPU pod "
                          "slice, Slurm job or MPI launch, name the processes with "
                          "--coordinator_address, --num_processes and --process_id") from None
    return True


def is_chief() -> bool:
    return jax.process_index() == 0


def local_rows(global_batch: int) -> slice:
    """This process's rows of a global batch: contiguous blocks in process order, which is the
    order of the devices on the mesh (make_mesh uses jax.devices(), sorted by process)."""
    count, index = jax.process_count(), jax.process_index()
    per_process = global_batch // count
    return slice(index * per_process, (index + 1) * per_process)


def any_process(flag: bool) -> bool:
    """True on every process if it is true on any (e.g. one host got SIGTERM)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
