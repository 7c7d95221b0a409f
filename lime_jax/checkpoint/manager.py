"""The one orbax CheckpointManager of a workdir, for saving and for every restore.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}, `digests.json` (integrity.py). All processes write
the state cooperatively (each its own shards); it restores into any mesh and process count (the target
shardings of `restore_state`), whole or only some subtrees (the parameters), and so does the data
iterator's state (`DataIteratorHandler`). Orbax writes each step to a temporary folder and renames it when
complete, so a crash mid-save never damages an earlier checkpoint; `DigestingManager` then writes the
step's digests.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from lime_jax.checkpoint import integrity
from lime_jax.checkpoint.errors import CheckpointMismatchError
from lime_jax.runtime import fileio


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
      raise CheckpointMismatchError(
        f"The data iterator checkpoint in {directory} was written by another process count and its "
        f"per-process states differ ({len(states)} distinct), so it cannot be restored by {count} "
        "process(es); resume with the original process count."
      )
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


class DigestingManager(ocp.CheckpointManager):
  """orbax's CheckpointManager, writing `digests.json` once a step has committed.

  `_finalize_checkpoint(step)` runs after the step's temporary folder was renamed (in the finalize thread
  of an async save, inline for a sync one); `Checkpointer.wait` writes any digest this hook missed (an
  orbax without it), so the only window without a digest is between the rename and the hash.
  """

  def _finalize_checkpoint(self, step: int):
    result = super()._finalize_checkpoint(step)
    integrity.ensure_digests(str(self.directory), step)
    return result


def checkpoints_dir(workdir: str) -> str:
  """WORKDIR/checkpoints: an absolute local path, or under the URL (gs://...: orbax writes there)."""
  return fileio.join(fileio.absolute(workdir), "checkpoints")


def open_manager(
  workdir: str, *, create: bool = False, max_to_keep: int | None = None, async_save: bool = False
) -> DigestingManager:
  """The CheckpointManager of WORKDIR/checkpoints (items `state`, `data`, `meta`); every save and restore
  of lime_jax opens it here. Without `create` (a reader), a missing workdir or checkpoints folder raises
  FileNotFoundError naming it."""
  directory = checkpoints_dir(workdir)
  if not create and not fileio.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir!r} does not exist.")
  if not create and not fileio.isdir(directory):
    raise FileNotFoundError(
      f"No checkpoints in {workdir!r}: expected {directory}. Train with "
      "`python -m lime_jax.main --workdir=...` first (evaluate: or use --random_init --config=...)."
    )
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save
  )
  return DigestingManager(
    directory,
    options=options,
    item_handlers={
      "state": ocp.PyTreeCheckpointHandler(),
      "data": DataIteratorHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    },
  )


def resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  """`step`, or the newest when None; FileNotFoundError naming the available steps when absent."""
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {manager.directory}.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"--step={step} not found in {manager.directory}; available steps: {steps}.")
  return step


def save_args(state: Any, data_iterator: Any | None, meta: dict) -> ocp.args.Composite:
  """What `manager.save` writes: the state, the data iterator's state (when given), `meta`."""
  args = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    args["data"] = DataSave(data_iterator)
  return ocp.args.Composite(**args)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The step's `meta` ({'step', 'arch', 'config', 'digests'}); an unreadable one raises the read error."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  """The tree of the step's saved state (orbax's array metadata: shapes and dtypes, no values)."""
  metadata = manager.item_metadata(step)["state"]
  if metadata is None:
    raise FileNotFoundError(f"{manager.directory}/{step}/state has no readable metadata.")
  return getattr(metadata, "tree", metadata)


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any, partial: bool = False) -> Any:
  """The step's state read into `target` (ShapeDtypeStructs with the shardings to restore into); with
  `partial`, only the subtrees `target` has (e.g. {'params': ...}), the rest left unread."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=partial)
  return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def restore_data(manager: ocp.CheckpointManager, step: int, data_iterator: Any) -> None:
  """Restores the data iterator's state in place; DamagedFileError when its position is not `step`."""
  manager.restore(step, args=ocp.args.Composite(data=DataRestore(data_iterator)))
  integrity.check_data_position(data_iterator.get_state(), step, f"{manager.directory}/{step}/data")
