"""The probes' cell store (lime_jax/probes/cells.py): saved as each cell finishes, read back only by a run
with the same step, config and options, removed when the probe's result is saved."""

from __future__ import annotations

import json
import os

import numpy as np

from lime_jax.probes.cells import CellStore, json_ready

HEADER = {"step": 7, "config_digest": "abc", "options": {"lengths": (4, 8), "seed": 0}}


def _counted(value):
  calls = []

  def compute():
    calls.append(1)
    return value

  return compute, calls


def test_cells_are_saved_as_they_finish_and_read_back_by_the_same_evaluation(tmp_path):
  store = CellStore(str(tmp_path), HEADER)
  assert store.start("copying") == 0
  compute, calls = _counted({"accuracy": np.float32(0.5), "preds": (1, None, 12345678901234567890)})
  first = store.get_or_compute("direct n=4", compute)
  assert first == {"accuracy": 0.5, "preds": [1, None, 12345678901234567890]} and len(calls) == 1
  assert store.get_or_compute("direct n=4", compute) == first and len(calls) == 1
  saved = json.loads((tmp_path / "cells" / "copying.json").read_text())
  assert saved["cells"] == {"direct n=4": first} and saved["step"] == 7

  again = CellStore(str(tmp_path), HEADER)  # a later run (--resume) with the same step, config, options
  assert again.start("copying") == 1
  assert again.get_or_compute("direct n=4", compute) == first and len(calls) == 1
  other, other_calls = _counted(2.0)
  assert again.get_or_compute("direct n=8", other) == 2.0 and len(other_calls) == 1
  again.finish()
  assert not os.path.exists(tmp_path / "cells" / "copying.json")


def test_cells_of_other_options_or_a_cut_file_are_not_read(tmp_path):
  CellStore(str(tmp_path), HEADER).start("collapse")
  store = CellStore(str(tmp_path), HEADER)
  store.start("collapse")
  store.get_or_compute("n=1", lambda: 1.0)
  for changed in ({"step": 8}, {"config_digest": "xyz"}, {"options": {"lengths": (4,), "seed": 0}}):
    assert CellStore(str(tmp_path), {**HEADER, **changed}).start("collapse") == 0, changed
  assert CellStore(str(tmp_path), HEADER).start("counting") == 0  # another probe's cells
  (tmp_path / "cells" / "collapse.json").write_text('{"step": 7, "cells": {"n=1"')  # cut short
  assert CellStore(str(tmp_path), HEADER).start("collapse") == 0


def test_json_ready_makes_numpy_and_non_finite_values_plain():
  got = json_ready({"a": np.arange(3), "b": np.float64("nan"), "c": (np.int64(2), np.bool_(True)), 4: 1.5})
  assert got == {"a": [0, 1, 2], "b": None, "c": [2, True], "4": 1.5}
  json.dumps(got, allow_nan=False)
