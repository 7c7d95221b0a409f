"""Orbax checkpoints of the train state and the grain data-iterator state, plus compatibility checks.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Orbax writes each step to a temporary folder
and renames it when complete, so a crash mid-save never damages an earlier checkpoint. `meta` records
the model config the state was made with; restoring under a different model config fails early with the
fields that differ.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

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
  return sig


class Checkpointer:
  """Saves and restores (train state, data iterator, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
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
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
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
  """(step, state as saved: nested dicts of arrays) from WORKDIR/checkpoints, latest by default."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: expected {directory}. Check --workdir.")
  manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  steps = list(manager.all_steps())
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise FileNotFoundError(f"Checkpoint step {step} not found in {directory}; available: {sorted(steps)}.")
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  return step, state
