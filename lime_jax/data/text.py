"""Language modelling: documents from tfds or from shard files, tokenised and packed on the fly.

Sources (`data.text.source`):
- 'tfds': any tfds dataset prepared as array_record, opened by name with `tfds.data_source` (random
  access, length from its metadata: no scan). The `local_text` builder below prepares one from a folder
  of `.txt` files: it splits each file into paragraphs at blank lines and sends each paragraph to
  'validation' when a stable hash of its text is below `validation_fraction` (repeated paragraphs never
  straddle the splits), else to 'train'; a document is a maximal run of same-split paragraphs of one
  file. Preparation writes array_record files under `data_dir` (pure Python/C++, no TensorFlow) and is
  the one step that reads the whole folder.
- 'files': parquet / jsonl / txt shards, local or gs:// (`data.text.files`, `eval_files`), streamed by
  `corpus.py` with nothing read at start-up but the shard listing.

Train: the documents (tfds) or shards (files) are shuffled per epoch (seed = config.seed) and process
p of P reads every P-th; eval reads `eval_split` / `eval_files` once, in stored order. Each document is
tokenised by `data.tokenizer` ('' = `ByteTokenizer`; else `subword.load_tokenizer`) in the grain worker
processes, followed by the tokenizer's EOS, and `corpus.PackIterDataset` cuts the concatenation into
windows of seq_len + 1 tokens (consecutive windows share one token). Document boundaries are marked
only by EOS: attention is not masked across documents. The iterator's state is a cursor (see
corpus.py), so a restored iterator continues exactly.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from lime_jax.data import base, corpus, subword
from lime_jax.data.tokenizer import ByteTokenizer

LOCAL_TEXT_NAME = "local_text"
TEXT_FEATURE = "text"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def read_paragraphs(source_dir: str) -> list[tuple[str, list[str]]]:
  """(relative path, paragraphs) of every .txt file under `source_dir` (recursive), sorted by path."""
  root = pathlib.Path(source_dir)
  if not root.is_dir():
    raise ValueError(
      f"config.data.text.source_dir={source_dir!r} is not a folder; point it at a folder of .txt files."
    )
  files = sorted(p for p in root.rglob("*.txt") if p.is_file())
  if not files:
    raise ValueError(f"config.data.text.source_dir={source_dir!r} holds no .txt files.")
  out = []
  for path in files:
    try:
      text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
      raise corpus.ShardError(
        f"{path} (under config.data.text.source_dir) is not UTF-8 at byte {e.start} ({e.reason}); convert "
        "it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from the folder."
      ) from None
    paragraphs = [p.strip("\n") for p in _PARAGRAPH_BREAK.split(text)]
    out.append((str(path.relative_to(root)), [p for p in paragraphs if p.strip()]))
  return out


def split_documents(source_dir: str, validation_fraction: float) -> dict[str, list[tuple[str, str]]]:
  """{'train': [(key, document)], 'validation': [...]} from the paragraphs of `source_dir`."""
  splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": []}
  for rel_path, paragraphs in read_paragraphs(source_dir):
    run: list[str] = []
    run_split, run_start = "", 0
    for i, paragraph in enumerate(paragraphs + [None]):
      split = (
        ""
        if paragraph is None
        else ("validation" if base.hash_fraction(paragraph) < validation_fraction else "train")
      )
      if run and split != run_split:
        splits[run_split].append((f"{rel_path}:{run_start}", "\n\n".join(run)))
        run = []
      if paragraph is not None:
        if not run:
          run_split, run_start = split, i
        run.append(paragraph)
  for split, docs in splits.items():
    if not docs:
      raise ValueError(
        f"the {split!r} split of {source_dir!r} is empty (validation takes the "
        f"paragraphs whose hash is below data.text.validation_fraction="
        f"{validation_fraction}); add text (blank lines separate paragraphs) or "
        "change data.text.validation_fraction."
      )
  return splits


class LocalText(tfds.core.GeneratorBasedBuilder):
  """tfds builder `local_text`: train/validation documents from a folder of .txt files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Paragraph-hash validation split, runs of paragraphs as documents."}

  def __init__(self, *, source_dir: str | None = None, validation_fraction: float = 0.1, **kwargs: Any):
    self._source_dir = os.path.abspath(source_dir) if source_dir else None
    self._validation_fraction = float(validation_fraction)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Documents from local .txt files (see lime_jax/data/text.py).",
      features=tfds.features.FeaturesDict({TEXT_FEATURE: tfds.features.Text()}),
      metadata=tfds.core.MetadataDict(
        source_dir=self._source_dir or "", validation_fraction=self._validation_fraction
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only.
    if not self._source_dir:
      raise ValueError(
        "local_text cannot be prepared without a source folder: set "
        "config.data.text.source_dir to a folder of .txt files."
      )
    docs = split_documents(self._source_dir, self._validation_fraction)
    return {split: self._generate_examples(items) for split, items in docs.items()}

  def _generate_examples(self, items: Sequence[tuple[str, str]]):
    for key, document in items:
      yield key, {TEXT_FEATURE: document}


def prepare_local_text(source_dir: str, data_dir: str | None, validation_fraction: float = 0.1) -> None:
  """Writes the `local_text` dataset of `source_dir` as array_record files under `data_dir`."""
  builder = LocalText(
    source_dir=source_dir, validation_fraction=validation_fraction, data_dir=data_dir or None
  )
  try:
    builder.download_and_prepare(file_format="array_record")
  except ModuleNotFoundError as e:
    if e.name != "importlib_resources":
      raise
    # tensorflow-datasets 4.9.x imports `importlib_resources` when preparing a builder defined in a
    # package but declares it only for Python < 3.9 (tensorflow/datasets#11212).
    raise ModuleNotFoundError(
      "preparing local_text needs the package importlib_resources, which tensorflow-datasets "
      "uses without declaring it (tensorflow/datasets#11212): pip install importlib_resources",
      name=e.name,
    ) from e


def _check_provenance(builder: LocalText, text_config: ml_collections.ConfigDict) -> None:
  """Fails when the prepared dataset came from another source folder or validation fraction."""
  meta = builder.info.metadata or {}
  wanted = {
    "source_dir": os.path.abspath(text_config.source_dir),
    "validation_fraction": float(text_config.validation_fraction),
  }
  for key, value in wanted.items():
    if key in meta and meta[key] != value:
      raise ValueError(
        f"the local_text dataset prepared in {builder.data_dir} has {key}={meta[key]!r}, but the "
        f"config asks for {value!r}: set config.data.text.data_dir to a fresh folder (or delete "
        f"{builder.data_dir}) to prepare it again."
      )


def ensure_prepared(text_config: ml_collections.ConfigDict) -> None:
  """Prepares `local_text` from `text_config.source_dir` when `text_config.data_dir` lacks it."""
  if text_config.name != LOCAL_TEXT_NAME:
    return  # a real tfds dataset: prepared by the user with file_format='array_record'.
  builder = LocalText(data_dir=text_config.data_dir or None)
  if builder.is_prepared():
    if text_config.source_dir:
      _check_provenance(builder, text_config)
    return
  if not text_config.source_dir:
    raise ValueError(
      f"config.data.text.data_dir={text_config.data_dir!r} has no prepared "
      f"{LOCAL_TEXT_NAME} dataset; set config.data.text.source_dir to a folder of "
      ".txt files to prepare it from."
    )
  prepare_local_text(
    text_config.source_dir, text_config.data_dir or None, float(text_config.validation_fraction)
  )


def open_split(text_config: ml_collections.ConfigDict, split: str) -> Sequence[Any]:
  """Random-access tfds data source of one split (prepares local_text first when needed)."""
  ensure_prepared(text_config)
  try:
    return tfds.data_source(
      text_config.name, split=split, data_dir=text_config.data_dir or None, download=False
    )
  except Exception as e:  # tfds raises several types for a missing dataset/split.
    raise ValueError(
      f"cannot open tfds dataset config.data.text.name={text_config.name!r} split={split!r} in "
      f"config.data.text.data_dir={text_config.data_dir!r} ({type(e).__name__}: {e}); prepare it "
      "with download_and_prepare(file_format='array_record') or check the split name."
    ) from e


class _TfdsTexts:
  """Random-access view of a tfds data source as {'text': str} records (no scan: len from metadata)."""

  def __init__(self, source: Sequence[Any], feature: str):
    self._source, self._feature = source, feature

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, str]:
    record = self._source[int(index)]
    if self._feature not in record:
      raise ValueError(
        f"tfds records have no feature config.data.text.feature={self._feature!r}; "
        f"their features: {sorted(record)}."
      )
    value = record[self._feature]
    return {"text": value.decode("utf-8") if isinstance(value, bytes) else str(value)}


def tokenizer_for(data_config: ml_collections.ConfigDict) -> base.Tokenizer:
  """`data.tokenizer` ('' = `ByteTokenizer`); pause ids are appended when `data.num_pause > 0`."""
  if not data_config.tokenizer:
    return ByteTokenizer()
  return subword.load_tokenizer(data_config.tokenizer, pause_tokens=int(data_config.num_pause) > 0)


class Tokenise:
  """grain map {'text'} -> int32 ids + EOS; loads the tokenizer once per (worker) process (`tokenizer`: the
  one the run already loaded, used in this process)."""

  def __init__(self, data_config: ml_collections.ConfigDict, tokenizer: base.Tokenizer | None = None):
    self._tokenizer_path = str(data_config.tokenizer)
    self._pause = int(data_config.num_pause) > 0
    self._tokenizer: base.Tokenizer | None = tokenizer

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_tokenizer": None}  # workers load their own.

  def __call__(self, record: dict[str, str]) -> np.ndarray:
    if self._tokenizer is None:
      self._tokenizer = (
        subword.load_tokenizer(self._tokenizer_path, pause_tokens=self._pause)
        if self._tokenizer_path
        else ByteTokenizer()
      )
    tok = self._tokenizer
    return np.array(tok.encode(record["text"]) + [tok.eos_id], np.int32)


def _is_train(split_kind: str) -> bool:
  if split_kind not in ("train", "eval"):
    raise ValueError(f"split_kind={split_kind!r} must be 'train' or 'eval'.")
  return split_kind == "train"


def document_dataset(
  config: ml_collections.ConfigDict, split_kind: str, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
  """IterDataset of {'text'} documents of the train (endless, shuffled, this process's share) or eval
  (one pass, stored order) split of `config.data.text`. Reads nothing but metadata / the shard listing."""
  t, train = config.data.text, _is_train(split_kind)
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  if t.source == "tfds":
    ds = grain.MapDataset.source(_TfdsTexts(open_split(t, t.split if train else t.eval_split), t.feature))
    if len(ds) == 0:
      raise ValueError(f"the {'train' if train else 'eval'} split of tfds dataset {t.name!r} is empty.")
    if train:
      ds = ds.shuffle(seed=int(config.seed)).repeat()[process_index::process_count]
    return ds.to_iter_dataset(options)
  shards = corpus.list_shards(
    t.files if train else t.eval_files, "config.data.text.files" if train else "config.data.text.eval_files"
  )
  for path in shards:
    corpus.shard_format(path, t.file_format)  # fail early on an unknown extension.
  if train:
    overlap = (
      set(shards) & set(corpus.list_shards(t.eval_files, "config.data.text.eval_files"))
      if t.eval_files
      else set()
    )
    if overlap:
      raise ValueError(
        f"config.data.text.files and eval_files share {len(overlap)} shard(s), e.g. "
        f"{sorted(overlap)[0]!r}; hold out separate shards for evaluation."
      )
  ds = grain.MapDataset.source(shards)
  if train:
    ds = ds.shuffle(seed=int(config.seed)).repeat()[process_index::process_count]
  return corpus.ShardDocumentsIterDataset(
    ds.to_iter_dataset(options), t.file_format, t.feature, t.get("decode_errors", "strict")
  )


def packed_stream(
  config: ml_collections.ConfigDict,
  split_kind: str,
  process_index: int = 0,
  process_count: int = 1,
  segment_ids: bool = False,
  tokenizer: base.Tokenizer | None = None,
) -> grain.IterDataset:
  """Tokenised, packed windows (see `corpus.PackIterDataset`) of one split of `config.data.text`, with
  per-document `positions` when `config.model.document_mask`; `tokenizer`: data.tokenizer already loaded
  (else loaded on first use)."""
  docs = document_dataset(config, split_kind, process_index, process_count)
  return corpus.PackIterDataset(
    docs.map(Tokenise(config.data, tokenizer)),
    int(config.data.seq_len),
    segment_ids=segment_ids,
    positions=bool(config.model.document_mask),
  )


def eval_windows(
  config: ml_collections.ConfigDict, num_examples: int, tokenizer: base.Tokenizer | None = None
) -> list[dict[str, np.ndarray]]:
  """The first `num_examples` windows of the eval split (fewer when it is shorter); raises when it has
  none. `tokenizer`: data.tokenizer already loaded (else loaded here)."""
  it = iter(packed_stream(config, "eval", tokenizer=tokenizer))
  rows = []
  for _ in range(num_examples):
    try:
      rows.append(next(it))
    except StopIteration:
      break
  if not rows:
    t = config.data.text
    where = t.eval_files if t.source == "files" else f"{t.name}:{t.eval_split}"
    raise ValueError(
      f"the eval split {where!r} has fewer than config.data.seq_len + 1 = "
      f"{config.data.seq_len + 1} tokens; lower data.seq_len or add text."
    )
  return rows
