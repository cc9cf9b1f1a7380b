"""Multi-process (multi-host) runs: ``jax.distributed`` initialisation and process-aware helpers.

JAX's multi-controller runtime runs one Python process per host (or per GPU); every process
runs the same program, the mesh spans the devices of all processes, and collectives (the train
step's ``pmean``) cross hosts. Conventions used across the project:

* ``initialize(mode, ...)`` must run before anything touches a device (first thing in ``main``).
  ``mode='off'``: one process (the default). ``'auto'``: ``jax.distributed.initialize()`` with no
  arguments, which detects a cloud TPU pod slice, SLURM, Open MPI or Kubernetes (JobSet) from the
  environment. ``'explicit'``: the coordinator address, process count and this process's id come
  from the caller (e.g. two processes on 127.0.0.1, or a multi-GPU host with one process per GPU).
* Every process takes part in every compiled program on global arrays and in every orbax save
  and restore (orbax synchronises them); only process 0 writes logs, pictures and
  ``metrics.json`` (``is_main_process``).
* Data: each process makes only its host-local part of the global batch (``data/images.py``
  shards records by process; ``data/device.py`` assembles the parts with
  ``jax.make_array_from_process_local_data``). Toy data is generated on device inside a compiled
  function whose output is sharded over the global mesh, so each device draws only its shard.
"""

from __future__ import annotations

import jax

MODES = ("off", "auto", "explicit")


def check_arguments(
    mode: str,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """A ``ValueError`` naming the bad value and the valid choices (nothing is initialised)."""
    if mode not in MODES:
        raise ValueError(f"distributed mode {mode!r} is not valid; valid choices: {list(MODES)}")
    explicit = (coordinator_address, num_processes, process_id)
    if mode == "explicit":
        if any(v is None for v in explicit):
            raise ValueError(
                "distributed mode 'explicit' needs coordinator_address (host:port), "
                f"num_processes and process_id; got coordinator_address={coordinator_address!r}, "
                f"num_processes={num_processes!r}, process_id={process_id!r}"
            )
        if ":" not in coordinator_address:
            raise ValueError(
                f"coordinator_address={coordinator_address!r} must be host:port, "
                "e.g. '10.0.0.2:1234'"
            )
        if num_processes < 1:
            raise ValueError(f"num_processes={num_processes} must be >= 1")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id={process_id} must be in [0, num_processes={num_processes})"
            )
    elif any(v is not None for v in explicit):
        raise ValueError(
            f"coordinator_address / num_processes / process_id are only used with distributed "
            f"mode 'explicit' (got mode {mode!r}); valid choices: {list(MODES)}"
        )


def initialize(
    mode: str = "off",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start ``jax.distributed`` as ``mode`` asks (see the module docstring); 'off' does nothing."""
    check_arguments(mode, coordinator_address, num_processes, process_id)
    if mode == "auto":
        jax.distributed.initialize()
    elif mode == "explicit":
        jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
    """Process 0: the one that logs and writes pictures and metrics."""
    return jax.process_index() == 0


def describe() -> str:
    """``process 0 of 2, 2 local / 4 global devices (cpu)``."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices "
        f"({jax.default_backend()})"
    )


def to_host(tree):
    """Fully replicated global arrays -> numpy on every process (no collective is launched).

    Lets one process run a local computation (a sampler, a plot) on the train state without
    the others joining a program over the global mesh.
    """
    return jax.device_get(tree)


def sync(name: str) -> None:
    """A barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
