"""Device mesh and shardings.

Mesh axes: ('data', 'fsdp', 'tensor'). The batch is split over data x fsdp. Axis types are `Auto`: we
pin the shardings of the step's inputs and outputs (parameters, optimizer state, batch) and let XLA's
sharding propagation place intermediates. `Explicit` axes would make every intermediate's sharding part
of its type and require annotations through the whole model; with Auto the same model code runs on
one CPU and on a pod slice, and the Seq-VCR batch covariance stays a plain reduction that XLA turns
into the right collectives.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor); one -1 takes the devices the others leave."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed axes' product "
                       f"{fixed}; change config.mesh sizes.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh: sizes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} devices but "
                     f"{num_devices} are available; set one axis to -1 or make the product match.")
  return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
  devices = devices or jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: jax.sharding.Mesh, abstract_state: Any) -> Any:
  """Shardings of the train state (replicated; per-parameter rules come with the scale-out work)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_divisible(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards:
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by data x fsdp = {shards} "
                     "mesh shards; change the batch size or config.mesh.")


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
