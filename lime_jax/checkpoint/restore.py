"""Reading a run's checkpoint outside training: its parameters (evaluation, sampling, export) or its raw
state (init_from, tests), through the workdir's one manager and the checks every restore runs.

`restore_params` restores what the step's meta describes: the model is the saved config's (its
architecture signature checked against the one recorded, the parameters' shapes against its
initialiser's), replicated onto the given mesh. Without a step, the newest intact one: damaged newer
steps are moved aside with one line on stderr (integrity.restore_newest_intact).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from lime_jax.checkpoint import integrity, structure
from lime_jax.checkpoint import manager as manager_lib
from lime_jax.checkpoint.errors import DamagedCheckpointError
from lime_jax.model import ModelConfig, init_params
from lime_jax.runtime import sharding as shard_lib


class Restored(NamedTuple):
  """A run's parameters with what describes them."""

  step: int
  config: dict  # the run's saved config, as saved (lime_jax.probes.runner.config_from_dict completes it)
  model_cfg: ModelConfig
  params: Any


def _stderr(line: str) -> None:
  print(line, file=sys.stderr)


def _read(
  workdir: str,
  step: int | None,
  attempt: Callable[[Any, int], Any],
  items: tuple[str, ...],
  log: Callable[[str], None],
  newest_intact: bool,
) -> integrity.Intact:
  """`attempt(manager, step)` on the step (the newest intact one when None and `newest_intact`, else the
  newest), after the integrity checks (integrity.restore_newest_intact)."""
  manager = manager_lib.open_manager(workdir)
  try:
    resolved = manager_lib.resolve_step(manager, step)  # no checkpoint, or no such step: FileNotFoundError
    found = integrity.restore_newest_intact(
      str(manager.directory),
      sorted(manager.all_steps()),
      functools.partial(attempt, manager),
      items,
      log,
      None if step is None and newest_intact else resolved,
    )
  finally:
    manager.close()
  if found.step is None:
    raise DamagedCheckpointError(
      f"No intact checkpoint in {manager.directory}: every step was damaged (moved to "
      f"{', '.join(found.moved)}). Train again with `python -m lime_jax.main --workdir=...`."
    )
  return found


def saved_model_config(meta: dict) -> ModelConfig:
  """The ModelConfig of a step's meta: the saved config's model fields (today's defaults for those it
  lacks), its vocabulary size the one recorded in the architecture signature."""
  model = meta.get("config", {}).get("model", {})
  return ModelConfig.from_config(model, meta.get("arch", {}).get("vocab_size"))


def _replicated() -> jax.sharding.Sharding:
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def restore_params(
  workdir: str,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  log: Callable[[str], None] = _stderr,
) -> Restored:
  """The parameters of WORKDIR's checkpoint `step` (the newest intact one when None), on `mesh` in the
  training rules' shardings (lime_jax/runtime/sharding.py; replicated on a mesh without fsdp / tensor
  axes; default: replicated on every device), with the step, the saved config and its ModelConfig. Each
  process reads only its devices' blocks.

  Refused with CheckpointMismatchError naming the fields or leaves when the saved config's architecture
  differs from the one the checkpoint recorded, or the parameters' shapes from its initialiser's. A
  damaged `step` raises DamagedCheckpointError naming the file and the intact steps; without `step`,
  damaged newer steps are moved aside, one line each on `log`."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh else _replicated()

  def attempt(manager: Any, s: int) -> tuple[dict, ModelConfig, Any]:
    where = f"{manager.directory}/{s}"
    meta = manager_lib.read_meta(manager, s)
    model_cfg = saved_model_config(meta)
    structure.check_compatible(meta.get("arch", {}), structure.arch_signature(model_cfg), where)
    abstract = {"params": jax.eval_shape(functools.partial(init_params, model_cfg), jax.random.key(0))}
    saved = manager_lib.state_metadata(manager, s)
    structure.check_structure(
      {"params": saved.get("params", {})},
      abstract,
      where,
      "The checkpoint and its saved config disagree: was the workdir reused with another model?",
    )
    shardings = (
      shard_lib.tree_shardings(mesh, abstract) if mesh else jax.tree.map(lambda _: sharding, abstract)
    )
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    params = manager_lib.restore_state(manager, s, target, partial=True)["params"]
    return meta.get("config", {}), model_cfg, params

  found = _read(workdir, step, attempt, ("state", "meta"), log, newest_intact=True)
  return Restored(found.step, *found.value)


def restore_raw_state(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, state as saved: nested dicts of arrays on one local device) from WORKDIR/checkpoints, the
  newest step by default; the checkpoint may come from any mesh and process count. A damaged step
  raises DamagedCheckpointError naming the file and the intact steps."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def attempt(manager: Any, s: int) -> Any:
    saved = manager_lib.state_metadata(manager, s)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    return manager_lib.restore_state(manager, s, target)

  found = _read(workdir, step, attempt, ("state",), _stderr, newest_intact=False)
  return found.step, found.value
