"""The text path's grain iterator through an orbax checkpoint, and the tfds stream resumed in worker
processes."""

from __future__ import annotations

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lime_jax.config import default_config, validate
from lime_jax.data import pipeline
from tests.unit.test_data_text import SEQ_LEN, _write_corpus


@pytest.fixture()
def corpus(tmp_path):
  paragraphs = _write_corpus(tmp_path / "src")
  c = default_config()
  c.data.task = "text"
  c.data.seq_len = SEQ_LEN
  c.data.text.source_dir = str(tmp_path / "src")
  c.data.text.data_dir = str(tmp_path / "tfds")
  c.train.batch_size = 4
  c.eval.num_examples, c.eval.batch_size = 10, 4
  validate(c)
  return c, paragraphs


def test_text_iterator_shapes_sharding_and_checkpoint(corpus, tmp_path):
  c, _ = corpus
  it = pipeline.make_train_iterator(c)
  batches = [next(it) for _ in range(5)]
  assert all(b["inputs"].shape == (4, SEQ_LEN) and b["loss_mask"].all() for b in batches)
  assert len({b["inputs"].tobytes() for b in batches}) == 5
  assert pipeline.vocab_size_for(c) == 272 and batches[0]["inputs"].max() < 272

  halves = [pipeline.make_train_iterator(c, p, 2) for p in range(2)]
  first = [next(h)["inputs"] for h in halves]
  assert all(f.shape == (2, SEQ_LEN) for f in first) and first[0].tobytes() != first[1].tobytes()

  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  restored = pipeline.make_train_iterator(c)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in expected:
    got = next(restored)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_tfds_stream_in_worker_processes_resumes_exactly(corpus):
  c, _ = corpus
  c.data.num_workers = 2
  it = pipeline.make_train_iterator(c)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it)["inputs"] for _ in range(4)]
  resumed = pipeline.make_train_iterator(c)
  resumed.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(resumed)["inputs"], w)
