"""A running probe's finished cells, saved as each finishes, so that an interrupted probe resumes there.

A probe with long loops (copying / counting: styles x lengths; collapse: dtypes x families x n) computes
each cell through `ProbeContext.cell(key, compute)`. With a store (`lime_jax.evaluate --resume`: `reuse`
in `runner.run_into`), each cell's value is written to OUT/cells/<probe>.json as it finishes, with the
evaluation's step, config digest and options; a later run with the same three reads the saved cells
instead of computing them again. The file is removed once the probe's result is in results.json.
Without a store (`--resume` off) every cell is computed, and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lime_jax.runtime import fileio


def json_ready(x: Any) -> Any:
  """JSON-ready copy: numpy scalars/arrays as Python values, tuples as lists, non-finite floats as None."""
  if isinstance(x, dict):
    return {str(k): json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_ready(v) for v in x]
  if isinstance(x, np.ndarray):
    return json_ready(x.tolist())
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def same_options(saved: Any, options: dict) -> bool:
  """Whether saved options (JSON) equal `options` in every current option field (a field removed from
  ProbeOptions since no longer changes a result; one added since is missing and fails)."""
  return isinstance(saved, dict) and all(k in saved and saved[k] == v for k, v in options.items())


class CellStore:
  """The cells of the probe being run (`start`), read from and written to OUT/cells/<probe>.json."""

  def __init__(self, out_dir: str, header: dict):
    self._dir = fileio.join(out_dir, "cells")
    self._identity = {k: json_ready(header[k]) for k in ("step", "config_digest", "options")}
    self._probe = ""
    self._cells: dict[str, Any] = {}

  def _path(self, probe: str) -> str:
    return fileio.join(self._dir, f"{probe}.json")

  def start(self, probe: str) -> int:
    """Begins `probe`: loads the cells an earlier run saved with the same step, config and options (a
    file from other ones, or one cut short, is ignored and later overwritten); returns how many."""
    self._probe, self._cells = probe, {}
    path = self._path(probe)
    if fileio.exists(path):
      try:
        saved = fileio.read_json(path)
      except (ValueError, OSError):
        saved = {}
      identity = self._identity
      if all(saved.get(k) == identity[k] for k in ("step", "config_digest")) and same_options(
        saved.get("options"), identity["options"]
      ):
        self._cells = dict(saved.get("cells", {}))
    return len(self._cells)

  def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
    """The saved value of cell `key`, or `compute()` made JSON-ready and saved (process 0 writes)."""
    if key in self._cells:
      return self._cells[key]
    value = json_ready(compute())
    self._cells[key] = value
    if jax.process_index() == 0:
      fileio.makedirs(self._dir)
      content = {**self._identity, "probe": self._probe, "cells": self._cells}
      fileio.replace_text(self._path(self._probe), json.dumps(content, allow_nan=False))
    return value

  def finish(self) -> None:
    """The probe's result is saved: its cells are no longer needed."""
    if jax.process_index() == 0 and self._probe and fileio.exists(self._path(self._probe)):
      fileio.remove(self._path(self._probe))
    self._probe, self._cells = "", {}
