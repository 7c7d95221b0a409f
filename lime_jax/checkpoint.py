"""Orbax checkpoints of the train state and the grain data-iterator state, plus compatibility checks.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. All processes write the state cooperatively (each
its own shards); it restores into any mesh and process count (the target shardings of `restore`), and
so does the data iterator's state (`DataIteratorHandler`). Orbax writes each step to a temporary folder
and renames it when complete, so a crash mid-save never damages an earlier checkpoint. `meta` records
the model config the state was made with; restoring under a different model config fails early with the
fields that differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

# Model fields whose change makes a checkpoint's parameters unusable (shapes or semantics).
_ARCH_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "ffn_dim",
                "tie_embeddings", "topology", "param_dtype")


def arch_signature(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
  """The part of the model config a checkpoint must agree with."""
  sig = {k: model_cfg[k] for k in _ARCH_FIELDS if k in model_cfg}
  sig["vocab_size"] = int(model_cfg.vocab_size or vocab_size)
  sig["num_kv_heads"] = int(model_cfg.num_kv_heads or model_cfg.num_heads)
  if model_cfg.topology == "lime":
    sig["lime.router"] = model_cfg.lime.router
  if "seq_vcr" in model_cfg and model_cfg.seq_vcr.enabled and model_cfg.seq_vcr.proj_dim:
    # params['seq_vcr_proj'] [K, D, P] exists only then.
    sig["seq_vcr.projection"] = [len(model_cfg.seq_vcr.layers), int(model_cfg.seq_vcr.proj_dim)]
  return sig


def _resolve(workdir: str) -> str:
  """An absolute local path, or the URL unchanged (gs://...: orbax writes there directly)."""
  return str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler, also restorable under a different process count.

  Each process saves its iterator's state as `process_<i>-of-<n>.json`. The train iterator's state
  (data/pipeline.py: the next local batch index, equal to the step) is the same for every process and
  every process count, so when this process's own file is absent (the checkpoint was written by another
  number of processes) the state is taken from the saved files, provided they all agree.
  """

  def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
    item = item or args.item
    index, count = jax.process_index(), jax.process_count()
    if (directory / f"process_{index}-of-{count}.json").exists():
      return super().restore(directory, item=item)
    states = {f.read_text() for f in directory.glob("process_*-of-*.json")}
    if len(states) != 1:
      raise ValueError(f"The data iterator checkpoint in {directory} was written by another process count "
                       f"and its per-process states differ ({len(states)} distinct), so it cannot be "
                       f"restored by {count} process(es); resume with the original process count.")
    item.set_state(json.loads(states.pop()))
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any


class Checkpointer:
  """Saves and restores (train state, data iterator, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(_resolve(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": DataIteratorHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      args["data"] = DataSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_compatible(self, step: int, signature: dict[str, Any]) -> None:
    """Raises ValueError listing the model fields where the checkpoint and the config disagree."""
    saved = self.read_meta(step).get("arch", {})
    diffs = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
    if diffs:
      lines = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
      raise ValueError(
          f"The checkpoint at {self.directory}/{step} was made with a different model config ({lines}). "
          "Use a new --workdir, or set these fields back to the checkpoint's values.")

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    """Restores the state into the shardings of `abstract_state`, and the iterator in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = DataRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError) as e:
      raise ValueError(f"Checkpoint {self.directory}/{step} does not match this config's state "
                       f"structure or shapes ({e}). Use a new --workdir or the config it was made with.") from e
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                      tree)


def restore_raw_state(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, state as saved: nested dicts of arrays on one local device) from WORKDIR/checkpoints, latest
  by default; the checkpoint may come from any mesh and process count."""
  directory = os.path.join(_resolve(workdir), "checkpoints")
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: expected {directory}. Check --workdir.")
  manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  steps = list(manager.all_steps())
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise FileNotFoundError(f"Checkpoint step {step} not found in {directory}; available: {sorted(steps)}.")
  # Onto this process's first device, whatever mesh and process count wrote it.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  return step, state
