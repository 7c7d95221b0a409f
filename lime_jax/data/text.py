"""Language modelling on local text through tensorflow-datasets (array_record files, no TensorFlow).

Preparation: the `local_text` tfds builder reads the `.txt` files under a source folder (recursively,
in sorted order, UTF-8), splits each file into paragraphs at blank lines and sends each paragraph to
the 'validation' split when a stable hash of its text is below `validation_fraction` (so repeated
paragraphs never straddle the splits), else to 'train'. A document (one tfds example, feature `text`)
is a maximal run of consecutive same-split paragraphs of one file, joined by a blank line.
`prepare_local_text` writes it as array_record files under `data_dir`; nothing is downloaded.
tfds needs no TensorFlow for this: array_record writing and `tfds.data_source` reading are pure
Python/C++ (the TFRecord format is the one that needs TensorFlow).

Reading: `PackedText` opens a split with `tfds.data_source` (random access) and views it as one token
stream: every document byte-tokenised (`ByteTokenizer`) and followed by EOS, documents in the split's
stored order. Chunk i is stream[i*seq_len : i*seq_len + seq_len + 1] (consecutive chunks share one
token, so every token but the first is a target exactly once; the tail shorter than a chunk is
dropped). Document boundaries are marked only by EOS: attention is not masked across documents.
Chunks are index-addressable, so the grain iterator over them checkpoints as a single index.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from lime_jax.data import base
from lime_jax.data.tokenizer import EOS_ID, ByteTokenizer

LOCAL_TEXT_NAME = "local_text"
TEXT_FEATURE = "text"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def read_paragraphs(source_dir: str) -> list[tuple[str, list[str]]]:
  """(relative path, paragraphs) of every .txt file under `source_dir` (recursive), sorted by path."""
  root = pathlib.Path(source_dir)
  if not root.is_dir():
    raise ValueError(f"config.data.text.source_dir={source_dir!r} is not a folder; point it at a "
                     "folder of .txt files.")
  files = sorted(p for p in root.rglob("*.txt") if p.is_file())
  if not files:
    raise ValueError(f"config.data.text.source_dir={source_dir!r} holds no .txt files.")
  out = []
  for path in files:
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
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
      split = "" if paragraph is None else (
          "validation" if base.hash_fraction(paragraph) < validation_fraction else "train")
      if run and split != run_split:
        splits[run_split].append((f"{rel_path}:{run_start}", "\n\n".join(run)))
        run = []
      if paragraph is not None:
        if not run:
          run_split, run_start = split, i
        run.append(paragraph)
  for split, docs in splits.items():
    if not docs:
      raise ValueError(f"the {split!r} split of {source_dir!r} is empty (validation takes the "
                       f"paragraphs whose hash is below data.text.validation_fraction="
                       f"{validation_fraction}); add text (blank lines separate paragraphs) or "
                       "change data.text.validation_fraction.")
  return splits


class LocalText(tfds.core.GeneratorBasedBuilder):
  """tfds builder `local_text`: train/validation documents from a folder of .txt files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Paragraph-hash validation split, runs of paragraphs as documents."}

  def __init__(self, *, source_dir: str | None = None, validation_fraction: float = 0.1,
               **kwargs: Any):
    self._source_dir = os.path.abspath(source_dir) if source_dir else None
    self._validation_fraction = float(validation_fraction)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Documents from local .txt files (see lime_jax/data/text.py).",
        features=tfds.features.FeaturesDict({TEXT_FEATURE: tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(source_dir=self._source_dir or "",
                                        validation_fraction=self._validation_fraction),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only.
    if not self._source_dir:
      raise ValueError("local_text cannot be prepared without a source folder: set "
                       "config.data.text.source_dir to a folder of .txt files.")
    docs = split_documents(self._source_dir, self._validation_fraction)
    return {split: self._generate_examples(items) for split, items in docs.items()}

  def _generate_examples(self, items: Sequence[tuple[str, str]]):
    for key, document in items:
      yield key, {TEXT_FEATURE: document}


def prepare_local_text(source_dir: str, data_dir: str | None, validation_fraction: float = 0.1) -> None:
  """Writes the `local_text` dataset of `source_dir` as array_record files under `data_dir`."""
  builder = LocalText(source_dir=source_dir, validation_fraction=validation_fraction,
                      data_dir=data_dir or None)
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
        name=e.name) from e


def _check_provenance(builder: LocalText, text_config: ml_collections.ConfigDict) -> None:
  """Fails when the prepared dataset came from another source folder or validation fraction."""
  meta = builder.info.metadata or {}
  wanted = {"source_dir": os.path.abspath(text_config.source_dir),
            "validation_fraction": float(text_config.validation_fraction)}
  for key, value in wanted.items():
    if key in meta and meta[key] != value:
      raise ValueError(
          f"the local_text dataset prepared in {builder.data_dir} has {key}={meta[key]!r}, but the "
          f"config asks for {value!r}: set config.data.text.data_dir to a fresh folder (or delete "
          f"{builder.data_dir}) to prepare it again.")


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
    raise ValueError(f"config.data.text.data_dir={text_config.data_dir!r} has no prepared "
                     f"{LOCAL_TEXT_NAME} dataset; set config.data.text.source_dir to a folder of "
                     ".txt files to prepare it from.")
  prepare_local_text(text_config.source_dir, text_config.data_dir or None,
                     float(text_config.validation_fraction))


def open_split(text_config: ml_collections.ConfigDict, split: str) -> Sequence[Any]:
  """Random-access tfds data source of one split (prepares local_text first when needed)."""
  ensure_prepared(text_config)
  try:
    return tfds.data_source(text_config.name, split=split, data_dir=text_config.data_dir or None,
                            download=False)
  except Exception as e:  # tfds raises several types for a missing dataset/split.
    raise ValueError(
        f"cannot open tfds dataset config.data.text.name={text_config.name!r} split={split!r} in "
        f"config.data.text.data_dir={text_config.data_dir!r} ({type(e).__name__}: {e}); prepare it "
        "with download_and_prepare(file_format='array_record') or check the split name.") from e


def _document_bytes(record: Any, feature: str) -> bytes:
  value = record[feature]
  return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class PackedText:
  """Fixed-length chunks of a split's EOS-separated byte stream, as training features.

  A grain `RandomAccessDataSource`: `len()` chunks, `[i]` -> dict with `inputs`/`targets`
  int32[seq_len], `loss_mask`/`answer_mask` float32[seq_len] (all ones: chunks are never padded).
  """

  def __init__(self, source: Sequence[Any], seq_len: int, feature: str = TEXT_FEATURE):
    self._source = source
    self._feature = feature
    self.seq_len = seq_len
    self.tokenizer = ByteTokenizer()
    lengths = np.array([len(_document_bytes(source[i], feature)) + 1 for i in range(len(source))],
                       dtype=np.int64)  # + 1: the EOS after each document.
    self._ends = np.cumsum(lengths)
    total = int(self._ends[-1]) if len(lengths) else 0
    self._num_chunks = max(0, (total - 1) // seq_len)

  @property
  def num_tokens(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __len__(self) -> int:
    return self._num_chunks

  def tokens(self, index: int) -> np.ndarray:
    """int32[seq_len + 1]: stream[index * seq_len : index * seq_len + seq_len + 1]."""
    if not 0 <= index < self._num_chunks:
      raise IndexError(f"chunk {index} out of range [0, {self._num_chunks}).")
    start, stop = index * self.seq_len, index * self.seq_len + self.seq_len + 1
    doc = int(np.searchsorted(self._ends, start, side="right"))
    pieces = []
    while True:
      doc_start = int(self._ends[doc - 1]) if doc else 0
      ids = np.frombuffer(_document_bytes(self._source[doc], self._feature), dtype=np.uint8)
      ids = np.append(ids.astype(np.int32) + self.tokenizer.num_special, EOS_ID).astype(np.int32)
      pieces.append(ids[max(0, start - doc_start):stop - doc_start])
      if int(self._ends[doc]) >= stop:
        break
      doc += 1
    out = np.concatenate(pieces)
    assert out.shape == (self.seq_len + 1,), out.shape
    return out

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    seq = self.tokens(int(index))
    ones = np.ones((self.seq_len,), np.float32)
    return {"inputs": seq[:-1], "targets": seq[1:], "loss_mask": ones, "answer_mask": ones.copy()}


def packed_split(config: ml_collections.ConfigDict, split: str) -> PackedText:
  """`PackedText` of one split of `config.data.text`, with a clear error when it has no chunk."""
  t = config.data.text
  packed = PackedText(open_split(t, split), int(config.data.seq_len), t.feature)
  if len(packed) == 0:
    raise ValueError(f"split {split!r} of {t.name!r} has {packed.num_tokens} tokens, fewer than one "
                     f"chunk of config.data.seq_len + 1 = {config.data.seq_len + 1}; lower "
                     "data.seq_len or add text.")
  return packed
