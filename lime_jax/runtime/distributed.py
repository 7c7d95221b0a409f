"""Multi-process start-up: `jax.distributed.initialize()` when the environment asks for it.

On Cloud TPU VMs and under SLURM, JAX detects the coordinator itself (LIME_DISTRIBUTED=auto forces that
path where the environment variables checked below are missing, e.g. in a plain ssh session on a TPU VM;
launch/tpu_vm.sh sets it). Elsewhere set LIME_COORDINATOR (host:port), LIME_NUM_PROCESSES and
LIME_PROCESS_ID. A single process with none of these runs without the distributed runtime.

`initialize` also starts jax's preemption service: SIGTERM to any process (or, on Cloud TPU, a
maintenance notice) makes every process stop at one agreed step (see train._StopFlag).
"""

from __future__ import annotations

import os

import jax


def _on_cloud_tpu() -> bool:
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"))


def _under_slurm() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def maybe_initialize() -> bool:
  """Initialises the distributed runtime if this is a multi-process run; returns whether it did."""
  coordinator = os.environ.get("LIME_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=int(os.environ["LIME_NUM_PROCESSES"]),
      process_id=int(os.environ["LIME_PROCESS_ID"]),
    )
    return True
  if _on_cloud_tpu() or _under_slurm() or os.environ.get("LIME_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
    return True
  return False
