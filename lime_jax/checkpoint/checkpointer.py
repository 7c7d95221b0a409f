"""Orbax checkpoints of the train state and the grain data-iterator state, plus compatibility checks.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. All processes write the state cooperatively (each
its own shards); it restores into any mesh and process count (the target shardings of `restore`), and
so does the data iterator's state (`DataIteratorHandler`). Orbax writes each step to a temporary folder
and renames it when complete, so a crash mid-save never damages an earlier checkpoint. `meta` records
the model config the state was made with; restoring under a different model config fails early with the
fields that differ (`CheckpointMismatchError`).

Integrity: once orbax has committed a step (renamed its temporary folder; sync and async saves alike),
process 0 writes `<step>/digests.json`, the SHA-256 of every file of the step (tmp + rename), and `meta`
records that it will exist. Before a step is restored its files are hashed again (streamed) and compared,
so a flipped byte anywhere in the arrays is damage, not wrong values. A step whose meta does not mention
digests (saved before they existed) is accepted unverified.

A step whose files are missing, cannot be decoded or fail their digest (disk or copy damage) is told
apart from a mismatch: `restore_newest_intact` tries the steps newest first, moves each damaged one aside
to `<step>.corrupt` (never deleting it), logs one line naming the step and the file, and returns the
newest intact step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from lime_jax.model import model_config
from lime_jax.model.topologies import get_topology
from lime_jax.runtime.errors import UserError

# Model fields whose change makes a checkpoint's parameters unusable (shapes or semantics).
_ARCH_FIELDS = (
  "vocab_size",
  "num_layers",
  "d_model",
  "num_heads",
  "num_kv_heads",
  "ffn_dim",
  "tie_embeddings",
  "topology",
  "param_dtype",
)
# Backbone options of the pretrained families (lime_jax/hf/) that add or reshape parameters, with their
# defaults (ModelConfig's): in the signature only when set, so checkpoints written before they existed
# still match.
_BACKBONE_FIELDS = {
  name: model_config.defaults(model_config.ModelConfig)[name]
  for name in (
    "attn_head_dim",
    "norm_type",
    "mlp_gated",
    "mlp_bias",
    "qkv_bias",
    "out_bias",
    "qk_norm",
    "position",
    "max_positions",
    "post_norms",
  )
}


def arch_signature(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
  """The part of the model config a checkpoint must agree with."""
  sig = {k: model_cfg[k] for k in _ARCH_FIELDS if k in model_cfg}
  sig["vocab_size"] = int(model_cfg.vocab_size or vocab_size)
  sig["num_kv_heads"] = int(model_cfg.num_kv_heads or model_cfg.num_heads)
  sig.update(
    {k: model_cfg[k] for k, default in _BACKBONE_FIELDS.items() if k in model_cfg and model_cfg[k] != default}
  )
  topology_signature = get_topology(model_cfg.topology).signature
  if topology_signature is not None:  # e.g. LIMe's router kind
    sig.update(topology_signature(model_cfg))
  if "seq_vcr" in model_cfg and model_cfg.seq_vcr.enabled and model_cfg.seq_vcr.proj_dim:
    # params['seq_vcr_proj'] [K, D, P] exists only then.
    sig["seq_vcr.projection"] = [len(model_cfg.seq_vcr.layers), int(model_cfg.seq_vcr.proj_dim)]
  return sig


def _resolve(workdir: str) -> str:
  """An absolute local path, or the URL unchanged (gs://...: orbax writes there directly)."""
  return str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)


# ------------------------------------------------------------------------------ damage vs mismatch
class CheckpointMismatchError(UserError, ValueError):
  """The checkpoint is readable but was made for another config (model fields, tree structure, shapes)."""


class DamagedCheckpointError(UserError, RuntimeError):
  """A checkpoint step cannot be read: a missing, truncated or corrupt file."""


class DamagedFileError(Exception):
  """Raised inside a restore attempt when a file reads but holds what no clean save writes (`where`:
  'FILE (why)'); the step is damaged."""

  def __init__(self, where: str):
    super().__init__(where)
    self.where = where


T = TypeVar("T")
# Files orbax writes as JSON (a garbled one fails with a bare JSONDecodeError that names no file).
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")
_REQUIRED = {"state": ("_METADATA",), "meta": ("metadata",)}
# Failures of the machine rather than of the files (memory, transient storage or access errors): raised.
_NOT_DAMAGE = (
  "RESOURCE_EXHAUSTED",
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "PERMISSION_DENIED",
  "UNAUTHENTICATED",
  "Out of memory",
)


class Intact(NamedTuple):
  """What `restore_newest_intact` found: the step (None: no intact step), what `attempt` returned for
  it, and where the damaged newer steps were moved."""

  step: int | None
  value: Any
  moved: list[str]


def _root_message(error: BaseException) -> str:
  """The innermost cause's first line, without tensorstore's spec dump."""
  while True:
    inner = error.__cause__ or error.__context__
    if inner is None or isinstance(inner, (StopIteration, GeneratorExit)):
      break
    error = inner
  lines = str(error).split("[tensorstore_spec")[0].strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _is_json(path: epath.Path) -> bool:
  try:
    json.loads(path.read_text())
    return True
  except (ValueError, UnicodeDecodeError):
    return False


def file_damage(step_dir: str, items: tuple[str, ...]) -> str | None:
  """What is visibly wrong with a step's files without reading any array (a missing item folder or
  required file, a JSON file that does not parse), or None. Checked before orbax reads the step: a
  missing OCDBT manifest otherwise leaves tensorstore callbacks printing tracebacks."""
  root = epath.Path(step_dir)
  for item in items:
    if not (root / item).exists():
      return f"{root / item} (missing)"
    ocdbt = item == "state" and list((root / item).glob("ocdbt.process_*"))
    for name in _REQUIRED.get(item, ()) + (("manifest.ocdbt",) if ocdbt else ()):
      if not (root / item / name).exists():
        return f"{root / item / name} (missing)"
  if "data" in items and not list((root / "data").glob("process_*-of-*.json")):
    return f"{root / 'data'}/process_*-of-*.json (missing)"
  candidates = [root / name for name in _JSON_NAMES] + [root / i / n for i in items for n in _JSON_NAMES]
  candidates += [f for i in items for f in (root / i).glob("process_*-of-*.json")]
  candidates += list((root / "state" / "array_metadatas").glob("*")) if "state" in items else []
  for path in candidates:
    if path.exists() and not _is_json(path):
      return f"{path} (not valid JSON)"
  return None


# ------------------------------------------------------------------------------------------- digests
DIGESTS = "digests.json"  # in the step folder: {"algorithm": "sha256", "files": {relative path: hex}}
_ALGORITHM = "sha256"
_CHUNK = 1 << 22  # bytes hashed per read


def _digest(path: epath.Path, algorithm: str = _ALGORITHM) -> str:
  """Hex digest of a file, read in chunks (hashlib releases the GIL on large updates)."""
  h = hashlib.new(algorithm)
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _digests(root: epath.Path, relpaths: list[str], algorithm: str = _ALGORITHM) -> list[str | None]:
  """Hex digests of files under `root` (None: missing)."""
  return [_digest(root / rel, algorithm) if (root / rel).exists() else None for rel in relpaths]


def _step_files(root: epath.Path) -> list[str]:
  """Relative paths of every file under a step folder, except the digests file (and its temporary);
  one listing per folder (no recursive glob: gs:// has none)."""

  def walk(folder: epath.Path, prefix: str) -> list[str]:
    out = []
    for entry in folder.iterdir():
      out += walk(entry, f"{prefix}{entry.name}/") if entry.is_dir() else [f"{prefix}{entry.name}"]
    return out

  return sorted(p for p in walk(root, "") if not p.startswith(DIGESTS))


def write_digests(step_dir: str) -> dict[str, Any]:
  """Hashes every file of a committed step into `<step>/digests.json` (written to a temporary name,
  then renamed, so a reader sees a whole file or none); returns the record."""
  root = epath.Path(step_dir)
  relpaths = _step_files(root)
  files = dict(zip(relpaths, _digests(root, relpaths)))
  record = {"algorithm": _ALGORITHM, "files": files}
  tmp = root / f"{DIGESTS}.tmp"
  tmp.write_text(json.dumps(record, indent=1))
  tmp.replace(root / DIGESTS)
  return record


def _expects_digests(root: epath.Path) -> bool:
  """Whether the step's meta says digests.json was to be written (steps saved before digests: no)."""
  try:
    return bool(json.loads((root / "meta" / "metadata").read_text()).get("digests"))
  except (OSError, ValueError, AttributeError):
    return False


def digest_damage(step_dir: str, items: tuple[str, ...]) -> str | None:
  """'FILE (reason)' for the first file of the step's `items` (and its top-level files) whose digest
  differs from the one recorded at save, or that is missing; None when all match or the step predates
  digests. Several processes split the files and agree on the verdict."""
  root = epath.Path(step_dir)
  path = root / DIGESTS
  if not path.exists():
    return f"{path} (missing: the save did not finish)" if _expects_digests(root) else None
  try:
    record = json.loads(path.read_text())
    algorithm, files = record["algorithm"], dict(record["files"])
  except (ValueError, KeyError, TypeError):
    return f"{path} (not valid JSON)"
  todo = [rel for rel in sorted(files) if "/" not in rel or rel.split("/", 1)[0] in items]
  index, count = jax.process_index(), jax.process_count()
  mine = list(range(index, len(todo), count))
  found = _digests(root, [todo[i] for i in mine], algorithm)
  first_bad = next((i for i, got in zip(mine, found) if got != files[todo[i]]), len(todo))
  if count > 1:
    first_bad = int(np.min(multihost_utils.process_allgather(np.asarray(first_bad, np.int64))))
  if first_bad == len(todo):
    return None
  bad = root / todo[first_bad]
  if not bad.exists():
    return f"{bad} (missing; listed in {DIGESTS})"
  return f"{bad} ({algorithm} differs from the digest recorded when the step was saved: the file changed)"


def verify_step(step_dir: str, items: tuple[str, ...] = ("state",)) -> None:
  """Raises DamagedCheckpointError naming the file when the step's files are damaged (see
  `file_damage`, `digest_damage`)."""
  problem = file_damage(step_dir, items) or digest_damage(step_dir, items)
  if problem:
    raise DamagedCheckpointError(f"Checkpoint {step_dir} is damaged ({problem}).")


def _try_step(
  directory: str, step: int, attempt: Callable[[int], T], items: tuple[str, ...]
) -> tuple[T | None, str | None]:
  """(attempt(step), None), or (None, 'FILE: reason') if the step is damaged. A mismatch propagates."""
  step_dir = os.path.join(directory, str(step))
  problem = file_damage(step_dir, items) or digest_damage(step_dir, items)
  if problem:
    return None, problem
  try:
    return attempt(step), None
  except (CheckpointMismatchError, MemoryError):
    raise
  except DamagedFileError as e:
    return None, e.where
  except Exception as e:  # any read or decode failure of the step's files: damage, not a mismatch
    if any(code in f"{e} {_root_message(e)}" for code in _NOT_DAMAGE):
      raise
    named = re.search(r'at local file "([^"]+)"', f"{e} {_root_message(e)}")
    return None, f"{named.group(1).rstrip('/') if named else step_dir}: {_root_message(e)}"


def move_aside(directory: str, step: int) -> str:
  """Renames checkpoints/<step> to <step>.corrupt (or .corrupt-2, ...); never deletes. Only process 0
  renames; every process returns the same new path, after a barrier in multi-process runs."""
  if jax.process_count() > 1:  # every process names the same target
    multihost_utils.sync_global_devices(f"lime_jax.checkpoint.before_move_aside.{step}")
  base = epath.Path(directory)
  target, n = base / f"{step}.corrupt", 1
  while target.exists():
    n += 1
    target = base / f"{step}.corrupt-{n}"
  if jax.process_index() == 0:
    (base / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"lime_jax.checkpoint.move_aside.{step}")
  return str(target)


def restore_newest_intact(
  directory: str,
  steps: list[int],
  attempt: Callable[[int], T],
  items: tuple[str, ...],
  log: Callable[[str], None] = print,
  step: int | None = None,
) -> Intact:
  """Runs `attempt(step)` (reads and checks every item of that step) on the newest step first.

  A `CheckpointMismatchError` (wrong config) propagates. Any other failure, or a missing or unparsable
  file (`file_damage`), means the step is damaged: it is moved aside (`move_aside`), one line naming the
  step and the file is logged, and the next older step is tried. With `step` given, only that step is
  tried and a damaged one raises `DamagedCheckpointError` naming the file and the intact steps, moving
  nothing. In multi-process runs every process reaches the same verdicts from the shared filesystem;
  only process 0 renames.
  """
  if step is not None:
    value, where = _try_step(directory, step, attempt, items)
    if where is None:
      return Intact(step, value, [])
    intact = [s for s in sorted(steps) if s != step and _try_step(directory, s, attempt, items)[1] is None]
    raise DamagedCheckpointError(
      f"Checkpoint step {step} in {directory} is damaged ({where}). Intact steps: {intact or 'none'}; "
      "choose one of them, or leave the step out to use the newest intact one."
    )
  moved = []
  for s in sorted(steps, reverse=True):
    value, where = _try_step(directory, s, attempt, items)
    if where is None:
      return Intact(s, value, moved)
    moved.append(move_aside(directory, s))
    log(f"Checkpoint step {s} is damaged ({where}); moved it to {moved[-1]} and trying the next older step.")
  return Intact(None, None, moved)


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


class _DigestingManager(ocp.CheckpointManager):
  """orbax's CheckpointManager, writing `digests.json` once a step has committed.

  `_finalize_checkpoint(step)` runs after the step's temporary folder was renamed (in the finalize thread
  of an async save, inline for a sync one); `Checkpointer.wait` writes any digest this hook missed (an
  orbax without it), so the only window without a digest is between the rename and the hash.
  """

  def _finalize_checkpoint(self, step: int):
    result = super()._finalize_checkpoint(step)
    ensure_digests(str(self.directory), step)
    return result


def ensure_digests(directory: str, step: int) -> None:
  """Writes `<step>/digests.json` on process 0 when the committed step has none."""
  root = epath.Path(directory) / str(step)
  if jax.process_index() == 0 and root.is_dir() and not (root / DIGESTS).exists():
    write_digests(str(root))


def check_data_position(state: Any, step: int, where: str) -> None:
  """Raises DamagedFileError when a restored index iterator's `next_index` (the batches it has yielded:
  the step, in every process) is not `step`: an edited or mixed-up `data` item (stream iterators, whose
  state is a cursor, are not checked here; their files are covered by the digests)."""
  position = state.get("next_index") if isinstance(state, dict) else None
  if position is not None and int(position) != step:
    raise DamagedFileError(
      f"{where} (data iterator at batch {position}, but the state is at step {step}; a clean save "
      "always has them equal)"
    )


class Checkpointer:
  """Saves and restores (train state, data iterator, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(_resolve(workdir), "checkpoints")
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self._saved: list[int] = []  # steps saved by this object: `wait` writes any digests the hook missed
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return _DigestingManager(
      self.directory,
      options=self._options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": DataIteratorHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
    """Saves a step (async when so configured); its digests follow once it has committed."""
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave({**meta, "digests": DIGESTS})}
    if data_iterator is not None:
      args["data"] = DataSave(data_iterator)
    saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    self._saved.append(step)
    return saved

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_compatible(self, step: int, signature: dict[str, Any]) -> None:
    """Raises CheckpointMismatchError listing the model fields where the checkpoint and the config
    disagree (an unreadable `meta` raises the read error: damage, not a mismatch)."""
    saved = self.read_meta(step).get("arch", {})
    diffs = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
    if diffs:
      lines = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
      raise CheckpointMismatchError(
        f"The checkpoint at {self.directory}/{step} was made with a different model config ({lines}). "
        "Use a new --workdir, or set these fields back to the checkpoint's values."
      )

  def check_structure(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointMismatchError if the saved state's tree or shapes (from orbax's metadata) differ
    from `abstract_state`'s; an unreadable metadata file raises the read error (damage)."""
    metadata = self.manager.item_metadata(step)["state"]
    if metadata is None:
      raise FileNotFoundError(f"{self.directory}/{step}/state has no readable metadata.")
    saved, want = _shapes(getattr(metadata, "tree", metadata)), _shapes(abstract_state)
    problems = [f"{k}: checkpoint {saved.get(k)} vs config {v}" for k, v in want.items() if saved.get(k) != v]
    problems += [f"{k}: in the checkpoint, not in the config" for k in saved if k not in want]
    if problems:
      raise CheckpointMismatchError(
        f"Checkpoint {self.directory}/{step} is intact but does not match this config's state structure "
        f"or shapes ({len(problems)} differ: {'; '.join(problems[:6])}). Use a new --workdir or the "
        "config it was made with."
      )

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    """Restores the state into the shardings of `abstract_state`, then the iterator in place (only once
    the state has been read). A mismatch raises CheckpointMismatchError; anything else is a read error."""
    self.check_structure(step, abstract_state)
    state = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )["state"]
    if data_iterator is not None:
      self.manager.restore(step, args=ocp.args.Composite(data=DataRestore(data_iterator)))
      check_data_position(data_iterator.get_state(), step, f"{self.directory}/{step}/data")
    return state

  def restore_latest_intact(
    self,
    abstract_state: Any,
    data_iterator: Any | None,
    signature: dict[str, Any],
    log: Callable[[str], None] = print,
  ) -> Intact:
    """The newest intact step restored (`restore_newest_intact`): meta readable and compatible with
    `signature`, the state's metadata matching `abstract_state`, state and data iterator restorable.
    Damaged newer steps are moved aside; the manager is then re-created (it caches its step list)."""

    def attempt(step: int) -> Any:
      self.check_compatible(step, signature)
      return self.restore(step, abstract_state, data_iterator)

    items = ("state", "meta") + (("data",) if data_iterator is not None else ())
    found = restore_newest_intact(self.directory, self.all_steps(), attempt, items, log)
    if found.moved:
      self.manager.close()
      self.manager = self._open()
    return found

  def wait(self) -> None:
    """Waits for the pending save; every step saved so far then has its digests."""
    self.manager.wait_until_finished()
    for step in self._saved:
      ensure_digests(self.directory, step)
    self._saved = []

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/embed': shape, ...} of a tree of arrays, ShapeDtypeStructs or orbax array metadata."""
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )


def restore_raw_state(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, state as saved: nested dicts of arrays on one local device) from WORKDIR/checkpoints, latest
  by default; the checkpoint may come from any mesh and process count. A damaged step raises
  DamagedCheckpointError naming the file (`verify_step`)."""
  directory = os.path.join(_resolve(workdir), "checkpoints")
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: expected {directory}. Check --workdir.")
  manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  steps = list(manager.all_steps())
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise FileNotFoundError(f"Checkpoint step {step} not found in {directory}; available: {sorted(steps)}.")
  verify_step(os.path.join(directory, str(step)), ("state",))
  # Onto this process's first device, whatever mesh and process count wrote it.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), manager.item_metadata(step)["state"]
  )
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  return step, state
