"""Tests of streamed shard corpora (data/corpus.py) and the 'files' text source (data/text.py)."""

from __future__ import annotations

import builtins
import contextlib
import json
import random
import re
import signal

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lime_jax.config import default_config, validate
from lime_jax.data import corpus, pipeline, subword, text
from lime_jax.data.tokenizer import ByteTokenizer

SEQ_LEN = 16
_WORDS = "the quick brown fox jumps over lazy dogs while seven wizards judge zürich café".split()


def _docs(n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [
    f"<{seed}.{i}> " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))) for i in range(n)
  ]


def _write(path, fmt: str, docs: list[str], rows_per_group: int = 3) -> None:
  if fmt == "parquet":
    pq.write_table(
      pa.table({"text": docs, "id": list(range(len(docs)))}), path, row_group_size=rows_per_group
    )
  elif fmt == "jsonl":
    path.write_text(
      "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8"
    )
  else:
    path.write_text("\n\n".join(d.replace(" dogs ", " dogs\n") for d in docs) + "\n", encoding="utf-8")


def _config(tmp_path, fmt: str, num_shards: int = 3, docs_per_shard: int = 7):
  """Writes train / eval shards; returns (config, {path: docs})."""
  shards = {}
  for split, n in (("train", num_shards), ("val", 1)):
    for s in range(n):
      path = tmp_path / f"{split}-{s:05d}.{fmt}"
      docs = _docs(docs_per_shard, seed=1000 * (split == "val") + s)
      _write(path, fmt, docs)
      shards[str(path)] = docs if fmt != "txt" else [d.replace(" dogs ", " dogs\n") for d in docs]
  c = default_config()
  c.data.task, c.data.seq_len = "text", SEQ_LEN
  c.data.text.source = "files"
  c.data.text.files = str(tmp_path / f"train-*.{fmt}")
  c.data.text.eval_files = str(tmp_path / f"val-*.{fmt}")
  c.train.batch_size = 4
  c.eval.num_examples, c.eval.batch_size = 6, 4
  validate(c)
  return c, shards


def _stream(texts, tok=ByteTokenizer()) -> np.ndarray:
  return np.concatenate([np.array(tok.encode(t) + [tok.eos_id], np.int32) for t in texts])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "txt"])
def test_readers_match_the_written_documents_and_resume_at_any_cursor(tmp_path, fmt):
  docs = _docs(10)
  path = tmp_path / f"s.{fmt}"
  _write(path, fmt, docs)
  want = docs if fmt != "txt" else [d.replace(" dogs ", " dogs\n") for d in docs]
  read = list(corpus.read_documents(str(path), "auto", "text"))
  assert [t for t, _ in read] == want
  for k in (0, 3, 9):  # resuming from the cursor after document k gives the rest.
    assert [t for t, _ in corpus.read_documents(str(path), "auto", "text", read[k][1])] == want[k + 1 :]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_eval_stream_is_the_eos_joined_shards_in_order(tmp_path, fmt):
  c, shards = _config(tmp_path, fmt)
  val = [d for p, docs in sorted(shards.items()) if "/val-" in p for d in docs]
  stream = _stream(val)
  batches = pipeline.make_eval_batches(c)
  rows = np.concatenate([b["inputs"] for b in batches])[:6]
  np.testing.assert_array_equal(
    rows, np.stack([stream[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN] for i in range(6)])
  )


def test_train_stream_reads_every_train_document_per_epoch_and_packs_segments(tmp_path):
  c, shards = _config(tmp_path, "jsonl")
  train = {p: docs for p, docs in shards.items() if "/train-" in p}
  order = list(grain.MapDataset.source(sorted(train)).shuffle(seed=int(c.seed)))
  stream = _stream([d for p in order for d in train[p]])
  it = iter(text.packed_stream(c, "train", segment_ids=True))
  for i in range((len(stream) - 1) // SEQ_LEN):
    f = next(it)
    window = stream[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN + 1]
    np.testing.assert_array_equal(np.append(f["inputs"], f["targets"][-1]), window)
    # segment ids: 1 at the start, +1 after every EOS among the inputs.
    want_seg = 1 + np.concatenate([[0], np.cumsum(window[:-2] == ByteTokenizer.eos_id)])
    np.testing.assert_array_equal(f["segment_ids"], want_seg)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_start_up_reads_no_shard_whatever_the_corpus_size(tmp_path, fmt, monkeypatch):
  opened: list[str] = []  # the shards opened (every other file is left out)
  real_open = builtins.open

  def recording_open(path, *args, **kwargs):
    if str(path).startswith(str(tmp_path)):
      opened.append(str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", recording_open)
  counts = {}
  for n in (10, 1000):
    root = tmp_path / str(n)
    root.mkdir()
    for s in range(n):
      _write(root / f"train-{s:05d}.{fmt}", fmt, _docs(2, seed=s))
    _write(root / f"val-0.{fmt}", fmt, _docs(2, seed=99))
    c = default_config()
    c.data.task, c.data.seq_len, c.train.batch_size = "text", SEQ_LEN, 2
    c.data.text.source, c.data.text.files = "files", str(root / f"train-*.{fmt}")
    c.data.text.eval_files = str(root / f"val-*.{fmt}")
    opened.clear()
    it = pipeline.make_train_iterator(c)
    at_start = len(opened)
    next(it)
    counts[n] = (at_start, len(opened))
  assert counts[10][0] == counts[1000][0] == 0  # building the iterator opens no shard.
  assert 1 <= counts[10][1] == counts[1000][1] <= 3  # the first batch opens only the shards it reads.


def _bpe(tmp_path) -> str:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
    _docs(200, seed=7),
    trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ),
  )
  tok.save(str(tmp_path / "tok.json"))
  return str(tmp_path / "tok.json")


def test_configured_tokenizer_encodes_the_stream(tmp_path):
  c, shards = _config(tmp_path, "jsonl")
  c.data.tokenizer = _bpe(tmp_path)
  ref = tokenizers.Tokenizer.from_file(c.data.tokenizer)
  assert pipeline.vocab_size_for(c) == ref.get_vocab_size() == 320
  eot = ref.token_to_id("<|endoftext|>")
  val = [d for p, docs in sorted(shards.items()) if "/val-" in p for d in docs]
  stream = np.concatenate([ref.encode(d, add_special_tokens=False).ids + [eot] for d in val])
  rows = pipeline.make_eval_batches(c)[0]["inputs"]
  np.testing.assert_array_equal(rows[0], stream[:SEQ_LEN])
  c.data.num_pause = 2
  assert pipeline.vocab_size_for(c) == 323
  assert isinstance(text.tokenizer_for(c.data), subword.HFTokenizer)


def test_files_errors_name_the_fields(tmp_path):
  c, _ = _config(tmp_path, "jsonl")
  c.data.text.files = str(tmp_path / "nothing-*.parquet")
  with pytest.raises(ValueError, match=r"config\.data\.text\.files=.*matches no file"):
    pipeline.make_train_iterator(c)
  c.data.text.files = str(tmp_path / "*.jsonl")  # includes the val shard.
  with pytest.raises(ValueError, match=r"files and eval_files share 1 shard"):
    pipeline.make_train_iterator(c)
  (tmp_path / "x.csv").write_text("a")
  c.data.text.files = str(tmp_path / "x.csv")
  with pytest.raises(ValueError, match=r"data\.text\.file_format"):
    pipeline.make_train_iterator(c)
  c.data.text.files, c.data.text.feature = str(tmp_path / "train-*.jsonl"), "body"
  with pytest.raises(ValueError, match=r"feature='body'"):
    next(pipeline.make_train_iterator(c))
  bad = default_config()
  bad.data.task, bad.data.text.source = "text", "files"
  with pytest.raises(ValueError, match=r"config\.data\.text\.files"):
    validate(bad)
  bad.data.text.files = "a.parquet"
  with pytest.raises(ValueError, match=r"config\.data\.text\.eval_files"):
    validate(bad)


@pytest.mark.parametrize("spec", ["experiments/baseline.py:paper", "experiments/lime_deep.py:paper32"])
def test_paper_presets_are_the_paper_text_setting_and_name_what_to_supply(tmp_path, spec):
  import importlib.util  # pylint: disable=import-outside-toplevel

  path, preset = spec.split(":")
  module_spec = importlib.util.spec_from_file_location("exp", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  c = module.get_config(preset)
  assert (c.data.seq_len, c.model.vocab_size, c.data.text.file_format) == (2048, 50_257, "parquet")
  with pytest.raises(ValueError, match=r"config\.data\.text\.files"):
    validate(c)
  c.data.text.files, c.data.text.eval_files = "train-*.parquet", "val-*.parquet"
  with pytest.raises(ValueError, match=r"config\.data\.tokenizer.*GPT-2"):
    validate(c)
  c.data.tokenizer = "gpt2/tokenizer.json"
  validate(c)


# ------------------------------------------------------------------------------------- bad shard files
@contextlib.contextmanager
def deadline(seconds: int):
  """A hang fails the test (TimeoutError) instead of blocking the suite."""

  def expire(*_):
    raise TimeoutError(f"no result within {seconds} s: the iterator hangs")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
@pytest.mark.parametrize("content", ["", "\n\n  \n\n"])
def test_empty_or_blank_train_shards_fail_naming_the_file_and_never_hang(tmp_path, fmt, content):
  c, _ = _config(tmp_path, fmt)
  bad = tmp_path / f"bad.{fmt}"
  bad.write_text(content)
  c.data.text.files = str(bad)
  why = "is empty (0 bytes)" if not content else "holds no document"
  with deadline(60), pytest.raises(corpus.ShardError, match=rf"'{bad}'.* {re.escape(why)}"):
    next(pipeline.make_train_iterator(c))


def test_a_blank_shard_among_good_ones_fails_when_the_stream_reaches_it(tmp_path):
  c, _ = _config(tmp_path, "jsonl", num_shards=2, docs_per_shard=2)
  (tmp_path / "train-00002.jsonl").write_text("\n \n")
  with deadline(60), pytest.raises(corpus.ShardError, match=r"train-00002\.jsonl' holds no document"):
    it = pipeline.make_train_iterator(c)
    for _ in range(50):
      next(it)


def test_bytes_that_are_not_utf8_name_the_file_and_line_or_are_replaced(tmp_path):
  path = tmp_path / "latin.txt"
  path.write_bytes("first document\n\nsecond\ncaf\u00e9 au lait\n".encode("latin1"))
  with pytest.raises(corpus.ShardError, match=r"latin\.txt' line 4 \(byte 26\) is not UTF-8.*decode_errors"):
    list(corpus.read_documents(str(path), "auto", "text"))
  docs = [t for t, _ in corpus.read_documents(str(path), "auto", "text", errors="replace")]
  assert docs == ["first document", "second\ncaf\ufffd au lait"]
  jsonl = tmp_path / "latin.jsonl"
  jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(corpus.ShardError, match=r"latin\.jsonl' line 2 \(byte 28\) is not UTF-8"):
    list(corpus.read_documents(str(jsonl), "auto", "text"))
  c = default_config()
  c.data.text.decode_errors = "latin1"
  with pytest.raises(ValueError, match=r"config\.data\.text\.decode_errors"):
    validate(c)


def test_a_malformed_jsonl_line_names_its_line_in_the_file(tmp_path):
  path = tmp_path / "s.jsonl"
  lines = [json.dumps({"text": f"doc {i}"}) for i in range(5)] + ['{"text": "cut sh', "[1, 2]"]
  path.write_text("\n".join(lines) + "\n")
  read = corpus.read_documents(str(path), "auto", "text")
  assert [next(read)[0] for _ in range(5)] == [f"doc {i}" for i in range(5)]
  with pytest.raises(corpus.ShardError, match=r"s\.jsonl' line 6 is not valid JSON .*fix or delete"):
    next(read)
  cursor = len("\n".join(lines[:6])) + 1  # resumed past the cut line: still the file's line number
  with pytest.raises(corpus.ShardError, match=r"s\.jsonl' line 7 has no config\.data\.text\.feature='text'"):
    list(corpus.read_documents(str(path), "auto", "text", cursor))


def test_a_folder_given_as_a_shard_is_named_with_the_fix(tmp_path):
  (tmp_path / "shards").mkdir()
  with pytest.raises(
    corpus.ShardError, match=r"'.*/shards' is a folder, not a shard file; .*shards/\*\.parquet"
  ):
    corpus.list_shards(str(tmp_path / "shards"))
