"""A shard corpus stream resumed after k batches equals the uninterrupted one, in process and with grain
worker processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lime_jax.data import pipeline
from tests.unit.test_corpus import _config


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_k_batches_equals_the_uninterrupted_stream(tmp_path, workers):
  c, _ = _config(tmp_path, "parquet", num_shards=5)
  c.data.num_workers = workers
  it = pipeline.make_train_iterator(c)
  for _ in range(7):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(12)]  # crosses shard and epoch boundaries (5 x 7 short documents).
  resumed = pipeline.make_train_iterator(c)
  resumed.set_state(json.loads(json.dumps(state)))  # the state is what the checkpoint stores: JSON.
  for w in want:
    got = next(resumed)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])
