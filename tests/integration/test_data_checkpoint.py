"""The synthetic-task grain iterator saved and restored through an orbax checkpoint (with prefetch and
worker processes)."""

from __future__ import annotations

import grain
import orbax.checkpoint as ocp
import pytest

from lime_jax.data import pipeline
from tests.unit.test_data import _assert_same, _config, _take

# ------------------------------------------------------------------------------------ iterator


@pytest.mark.parametrize("prefetch,num_workers", [(0, 0), (2, 0), (2, 2)])
def test_iterator_checkpoint_round_trip_with_orbax(tmp_path, prefetch, num_workers):
  c = _config(prefetch=prefetch, num_workers=num_workers)
  it = pipeline.make_train_iterator(c)
  _take(it, 4)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 3)
  it.close()
  _assert_same(expected, _take(pipeline.make_train_iterator(_config()), 7)[4:])  # any workers.

  restored = pipeline.make_train_iterator(c)
  _take(restored, 1)  # a used iterator must be rewound by the restore too.
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  try:
    _assert_same(_take(restored, 3), expected)
  finally:
    restored.close()
