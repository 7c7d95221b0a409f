"""Damaged checkpoint steps: digests, the checks run before every restore, moving damaged steps aside.

Digests: once orbax has committed a step (renamed its temporary folder; sync and async saves alike),
process 0 writes `<step>/digests.json`, the SHA-256 of every file of the step (tmp + rename), and `meta`
records that it will exist. Before a step is restored its files are hashed again (streamed) and compared,
so a flipped byte anywhere in the arrays is damage, not wrong values. A step whose meta does not mention
digests (saved before they existed) is accepted unverified.

A step whose files are missing, cannot be decoded or fail their digest (disk or copy damage) is told
apart from a mismatch (errors.py): `restore_newest_intact` tries the steps newest first, checking each
with `step_damage` before reading it (every restore of lime_jax goes through it), moves each damaged one
aside to `<step>.corrupt` (never deleting it), logs one line naming the step and the file, and returns
the newest intact step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lime_jax.checkpoint.errors import CheckpointMismatchError, DamagedCheckpointError, DamagedFileError

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


def ensure_digests(directory: str, step: int) -> None:
  """Writes `<step>/digests.json` on process 0 when the committed step has none."""
  root = epath.Path(directory) / str(step)
  if jax.process_index() == 0 and root.is_dir() and not (root / DIGESTS).exists():
    write_digests(str(root))


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


def step_damage(step_dir: str, items: tuple[str, ...]) -> str | None:
  """'FILE (reason)' when the step's `items` are damaged (`file_damage`, then `digest_damage`), else
  None: the check every restore runs before orbax reads the step."""
  return file_damage(step_dir, items) or digest_damage(step_dir, items)


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


# ------------------------------------------------------------------------------- the newest intact step
def _try_step(
  directory: str, step: int, attempt: Callable[[int], T], items: tuple[str, ...]
) -> tuple[T | None, str | None]:
  """(attempt(step), None), or (None, 'FILE: reason') if the step is damaged. A mismatch propagates."""
  step_dir = os.path.join(directory, str(step))
  problem = step_damage(step_dir, items)
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

  A `CheckpointMismatchError` (wrong config) propagates. Any other failure, or a damaged file
  (`step_damage`), means the step is damaged: it is moved aside (`move_aside`), one line naming the
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
