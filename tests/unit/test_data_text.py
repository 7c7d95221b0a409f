"""Tests of the text path: local tfds builder (array_record, no TensorFlow), packing, batches."""

from __future__ import annotations

import pathlib

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lime_jax.config import default_config, validate
from lime_jax.data import pipeline, text
from lime_jax.data.tokenizer import EOS_ID, ByteTokenizer
from lime_jax.model.model_config import ModelConfig

SEQ_LEN = 32
_WORDS = (
  "the quick brown fox jumps over lazy dogs while seven wizards quietly judge boxing "
  "matches in zürich and a café"
).split()


def _write_corpus(root) -> dict[str, list[str]]:
  """4 files of 12 paragraphs (a few KB in all); returns the paragraphs of each file."""
  rng = np.random.default_rng(0)
  root.mkdir()
  corpus = {}
  for f in range(4):
    paragraphs = []
    for p in range(12):
      lines = [" ".join(rng.choice(_WORDS, size=8)) for _ in range(1 + p % 3)]
      paragraphs.append(f"[{f}.{p}] " + "\n".join(lines))
    corpus[f"doc{f}.txt"] = paragraphs
    (root / f"doc{f}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
  return corpus


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


def test_split_documents_is_a_disjoint_paragraph_partition(corpus):
  c, paragraphs = corpus
  docs = text.split_documents(c.data.text.source_dir, 0.1)
  assert docs["train"] and docs["validation"]
  split_paragraphs = {s: [p for _, d in items for p in d.split("\n\n")] for s, items in docs.items()}
  everything = [p for ps in paragraphs.values() for p in ps]
  assert sorted(split_paragraphs["train"] + split_paragraphs["validation"]) == sorted(everything)
  assert not set(split_paragraphs["train"]) & set(split_paragraphs["validation"])
  assert docs == text.split_documents(c.data.text.source_dir, 0.1)  # deterministic.


def test_prepare_and_read_through_tfds_data_source(corpus):
  c, _ = corpus
  t = c.data.text
  text.ensure_prepared(t)
  version_dir = next(c_dir for c_dir in (pathlib.Path(t.data_dir) / "local_text").iterdir())
  assert list(version_dir.glob("local_text-train.array_record-*"))
  assert list(version_dir.glob("local_text-validation.array_record-*"))
  expected = text.split_documents(t.source_dir, t.validation_fraction)
  for split in ("train", "validation"):
    source = tfds.data_source("local_text", split=split, data_dir=t.data_dir, download=False)
    read = sorted(source[i]["text"].decode("utf-8") for i in range(len(source)))
    assert read == sorted(d for _, d in expected[split])
  text.ensure_prepared(t)  # second call reuses the prepared files.


def _stream(texts, tok=ByteTokenizer()) -> np.ndarray:
  """The EOS-joined token stream of `texts` (the reference the packed windows must cut)."""
  return np.concatenate([np.array(tok.encode(t) + [tok.eos_id], np.int32) for t in texts])


def _windows(stream: np.ndarray, n: int, seq_len: int = SEQ_LEN) -> list[np.ndarray]:
  return [stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]


def test_tfds_stream_packs_the_shuffled_documents(corpus):
  c, _ = corpus
  source = text.open_split(c.data.text, "train")
  docs = [source[i]["text"].decode("utf-8") for i in range(len(source))]
  order = list(grain.MapDataset.source(list(range(len(docs)))).shuffle(seed=int(c.seed)))
  want = _windows(_stream([docs[k] for k in order]), 12)
  it = iter(text.packed_stream(c, "train"))
  for w in want:
    f = next(it)
    np.testing.assert_array_equal(np.append(f["inputs"], f["targets"][-1]), w)
    assert f["inputs"].dtype == np.int32 and f["loss_mask"].dtype == np.float32 and f["loss_mask"].all()


def test_text_epochs_cover_every_document(corpus):
  c, _ = corpus
  c.train.batch_size = 1
  source = text.open_split(c.data.text, "train")
  total = len(_stream([source[i]["text"].decode("utf-8") for i in range(len(source))]))
  it = pipeline.make_train_iterator(c)
  first_epoch = np.concatenate([next(it)["targets"][0] for _ in range(total // SEQ_LEN)])
  assert np.sum(first_epoch == EOS_ID) >= len(source) - 1  # every document's end went by.


def test_text_eval_batches_use_validation_split(corpus):
  c, _ = corpus
  batches = pipeline.make_eval_batches(c)
  valid = text.open_split(c.data.text, "validation")
  stream = _stream([valid[i]["text"].decode("utf-8") for i in range(len(valid))])
  n = min(10, (len(stream) - 1) // SEQ_LEN)
  assert sum(b["example_mask"].sum() for b in batches) == n
  rows = np.concatenate([b["inputs"] for b in batches])[:n]
  np.testing.assert_array_equal(rows, np.stack([w[:-1] for w in _windows(stream, n)]))


def test_text_errors_name_the_config_fields(corpus, tmp_path):
  c, _ = corpus
  missing = default_config().data.text
  missing.data_dir = str(tmp_path / "empty")
  with pytest.raises(ValueError, match=r"data\.text\.source_dir"):
    text.ensure_prepared(missing)
  text.ensure_prepared(c.data.text)
  c.data.text.validation_fraction = 0.3
  with pytest.raises(ValueError, match=r"validation_fraction.*data\.text\.data_dir"):
    text.ensure_prepared(c.data.text)
  c.data.text.validation_fraction = 0.1
  c.data.seq_len = 100_000
  with pytest.raises(ValueError, match=r"data\.seq_len"):
    pipeline.make_eval_batches(c)
  c.data.seq_len, c.model.vocab_size = SEQ_LEN, 100
  with pytest.raises(ValueError, match=r"model\.vocab_size=100.*272 ids.*data\.tokenizer"):
    ModelConfig.from_config(c.model, pipeline.vocab_size_for(c))
