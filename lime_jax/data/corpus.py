"""Streamed text corpora: shard files read with a resumable cursor, and on-the-fly packing.

Start-up reads nothing but the shard listing (one glob, with each match's type and size): a shard is
opened only when a grain iterator (in a worker process when `data.num_workers > 0`) reaches it, so the
cost of starting does not grow with the corpus. The listing refuses a folder or an empty (0-byte) file
among the matches; what only reading shows (a shard with no document, bytes that are not UTF-8, a jsonl
line that is not a JSON object with the text field) raises `ShardError` naming the file, the line and the
fix when the shard is read (the first batch is read before the train step is compiled). A shard that
yields no document raises, so a training stream never spins over empty shards.

Shard formats (`file_format`, 'auto' takes it from the extension):
- `parquet` (FineWeb / FineWeb-Edu layout): the text column `field`, read one row group at a time;
  cursor = (row group, row). Only the footer and the row groups in use are read.
- `jsonl`: one JSON object per line, text in `field`; cursor = byte offset of the next line.
- `txt`: documents separated by blank lines; cursor = byte offset of the next document.
Paths may be local or any fsspec URL (`gs://...` needs `gcsfs`); `patterns` is a comma-separated list
of globs, listed in sorted order.

Documents of a shard are read in stored order. `ShardDocumentsIterDataset` turns an IterDataset of shard
paths into one of documents, with state (shard iterator state, cursor): restoring re-opens the shard
and seeks. `PackIterDataset` tokenised documents -> fixed windows of `seq_len + 1` tokens of their
concatenation, consecutive windows sharing one token (every token but the very first is a target
once); its state is (parent state before the first document still in the buffer, tokens of that
document already consumed), so a restored iterator re-reads at most one window's documents and
continues exactly.
"""

from __future__ import annotations

import collections
import glob as glob_lib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from lime_jax.runtime.errors import UserError

FORMATS = ("auto", "parquet", "jsonl", "txt")
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


DECODE_ERRORS = ("strict", "replace", "ignore")


class ShardError(UserError, ValueError):
  """A shard file that cannot be read as configured; the message names the file, the line and the fix."""


def _fs_and_path(url: str):
  if "://" not in url:
    return None, url
  import fsspec  # pylint: disable=import-outside-toplevel

  try:
    return fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    raise ValueError(f"cannot open {url!r} ({e}); for gs:// install gcsfs (pip install gcsfs).") from e


def list_shards(patterns: str, field: str = "config.data.text.files") -> list[str]:
  """Sorted shard paths matching the comma-separated globs `patterns` (local or fsspec URLs)."""
  out: list[str] = []
  for pattern in (p.strip() for p in str(patterns).split(",")):
    if not pattern:
      continue
    fs, path = _fs_and_path(os.path.expanduser(pattern))
    if fs is None:
      found = {m: _local_info(m) for m in glob_lib.glob(path, recursive=True)}
    else:
      protocol = pattern.split("://", 1)[0]
      listing = fs.glob(path, detail=True)
      found = {
        (f"{protocol}://{m}" if "://" not in m else m): (info.get("type") == "directory", info.get("size"))
        for m, info in listing.items()
      }
    if not found:
      raise ValueError(
        f"{field}={patterns!r}: the glob {pattern!r} matches no file; point it at "
        "shards such as 'data/train-*.parquet'."
      )
    for match, (is_dir, size) in sorted(found.items()):
      if is_dir:
        raise ShardError(
          f"{field}={patterns!r}: {match!r} is a folder, not a shard file; give the files inside it, "
          f"e.g. '{match.rstrip('/')}/*.parquet' (or *.jsonl, *.txt)."
        )
      if size == 0:
        raise ShardError(
          f"{field}={patterns!r}: shard {match!r} is empty (0 bytes); remove it or narrow the glob."
        )
    out.extend(sorted(found))
  if not out:
    raise ValueError(f"{field} is empty; set it to a glob of parquet / jsonl / txt shards.")
  return out


def _local_info(path: str) -> tuple[bool, int | None]:
  """(is a folder, size in bytes) of a local path."""
  return os.path.isdir(path), (None if os.path.isdir(path) else os.path.getsize(path))


def shard_format(path: str, file_format: str) -> str:
  """The format of `path` ('auto': from its extension)."""
  if file_format != "auto":
    return file_format
  ext = os.path.splitext(path)[1].lower()
  if ext not in _EXTENSIONS:
    raise ValueError(
      f"cannot tell the format of shard {path!r} from its extension; set "
      f"config.data.text.file_format to one of {FORMATS[1:]}."
    )
  return _EXTENSIONS[ext]


def _open(path: str, mode: str = "rb"):
  fs, p = _fs_and_path(path)
  return open(p, mode) if fs is None else fs.open(p, mode)


def _parquet_documents(
  path: str, field: str, cursor: Any, errors: str = "strict"
) -> Iterator[tuple[str, Any]]:
  del errors  # arrow has validated the strings
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  group, row = cursor or (0, 0)
  with _open(path) as f:
    pf = pq.ParquetFile(f)
    if field not in pf.schema_arrow.names:
      raise ShardError(
        f"parquet shard {path!r} has no column config.data.text.feature={field!r}; "
        f"its columns: {pf.schema_arrow.names}."
      )
    for g in range(group, pf.metadata.num_row_groups):
      texts = pf.read_row_group(g, columns=[field]).column(0).to_pylist()
      for r in range(row if g == group else 0, len(texts)):
        yield texts[r] or "", (g, r + 1)


def _line_of(path: str, offset: int) -> int:
  """1-based line number of byte `offset` of a shard (read again only to word an error)."""
  with _open(path) as f:
    return f.read(offset).count(b"\n") + 1


def _decode(data: bytes, path: str, offset: int, errors: str) -> str:
  """UTF-8 text of bytes that start at byte `offset` of `path`; a ShardError names the line and byte."""
  try:
    return data.decode("utf-8", errors=errors)
  except UnicodeDecodeError as e:
    at = offset + e.start
    raise ShardError(
      f"shard {path!r} line {_line_of(path, at)} (byte {at}) is not UTF-8 ({e.reason}: "
      f"{data[e.start : e.start + 4]!r}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or "
      "set config.data.text.decode_errors='replace' (or 'ignore')."
    ) from None


def _jsonl_documents(path: str, field: str, cursor: Any, errors: str = "strict") -> Iterator[tuple[str, Any]]:
  offset = int(cursor or 0)
  with _open(path) as f:
    f.seek(offset)
    for line in f:
      start, offset = offset, offset + len(line)
      if not line.strip():
        continue
      try:
        record = json.loads(_decode(line, path, start, errors))
      except json.JSONDecodeError as e:
        raise ShardError(
          f"jsonl shard {path!r} line {_line_of(path, start)} is not valid JSON ({e.msg}, column "
          f'{e.colno}); each line must be one JSON object such as {{"{field}": "..."}}: fix or delete '
          "that line."
        ) from None
      if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ShardError(
          f"jsonl shard {path!r} line {_line_of(path, start)} has no config.data.text.feature="
          f"{field!r} (keys: {keys}); set data.text.feature to the text's key, or fix that line."
        )
      yield str(record[field]), offset


def _txt_documents(path: str, field: str, cursor: Any, errors: str = "strict") -> Iterator[tuple[str, Any]]:
  del field
  offset = int(cursor or 0)
  with _open(path) as f:
    f.seek(offset)
    lines: list[bytes] = []
    start = offset
    for line in f:
      if not lines:
        start = offset
      offset += len(line)
      if line.strip():
        lines.append(line)
      elif lines:
        yield _decode(b"".join(lines), path, start, errors).strip("\n"), offset
        lines = []
    if lines:
      yield _decode(b"".join(lines), path, start, errors).strip("\n"), offset


_READERS: dict[str, Callable[[str, str, Any, str], Iterator[tuple[str, Any]]]] = {
  "parquet": _parquet_documents,
  "jsonl": _jsonl_documents,
  "txt": _txt_documents,
}


def read_documents(
  path: str, file_format: str, field: str, cursor: Any = None, errors: str = "strict"
) -> Iterator[tuple[str, Any]]:
  """(document text, cursor after it) of shard `path` from `cursor` (None: the start); `errors`: what
  to do with bytes that are not UTF-8 (`DECODE_ERRORS`)."""
  return _READERS[shard_format(path, file_format)](path, field, cursor, errors)


class _ShardDocumentsIterator(grain.DatasetIterator):
  """Documents of the shards the parent yields; state = (parent state before the shard, cursor). A shard
  read from its start that yields no document raises ShardError (a stream of such shards would spin)."""

  def __init__(self, parent: grain.DatasetIterator, file_format: str, field: str, errors: str = "strict"):
    super().__init__(parent)
    self._format, self._field, self._errors = file_format, field, errors
    self._shard_state = self._parent.get_state()
    self._cursor: Any = None
    self._docs: Iterator[tuple[str, Any]] | None = None
    self._path = ""

  def _read(self, cursor: Any) -> Iterator[tuple[str, Any]]:
    self._path = str(next(self._parent))
    return read_documents(self._path, self._format, self._field, cursor, self._errors)

  def __next__(self) -> dict[str, Any]:
    while True:
      fresh = self._docs is None
      if fresh:
        self._shard_state = self._parent.get_state()
        self._docs = self._read(self._cursor)
      try:
        text, self._cursor = next(self._docs)
        return {"text": text}
      except StopIteration:
        if fresh and self._cursor is None:
          raise ShardError(
            f"shard {self._path!r} holds no document (only blank lines or no rows); remove it from "
            "config.data.text.files / eval_files or fill it."
          ) from None
        self._docs, self._cursor = None, None

  def get_state(self) -> dict[str, Any]:
    if self._docs is None:
      return {"parent": self._parent.get_state(), "cursor": None}
    return {"parent": self._shard_state, "cursor": self._cursor}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._shard_state = state["parent"]
    cursor = state["cursor"]
    self._cursor = tuple(cursor) if isinstance(cursor, list) else cursor
    self._docs = None
    if cursor is not None:  # re-open the shard the state was inside of.
      self._docs = self._read(self._cursor)


class ShardDocumentsIterDataset(grain.IterDataset):
  """IterDataset of {'text': document} over an IterDataset of shard paths (`errors`: how bytes that are
  not UTF-8 are decoded, `DECODE_ERRORS`)."""

  def __init__(self, parent: grain.IterDataset, file_format: str, field: str, errors: str = "strict"):
    super().__init__(parent)
    self._format, self._field, self._errors = file_format, field, errors

  def __iter__(self) -> grain.DatasetIterator:
    return _ShardDocumentsIterator(self._parent.__iter__(), self._format, self._field, self._errors)


class _PackIterator(grain.DatasetIterator):
  """Windows of seq_len + 1 tokens over the concatenated token arrays of the parent."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, segment_ids: bool, positions: bool):
    super().__init__(parent)
    self._seq_len, self._segment_ids, self._positions = seq_len, segment_ids, positions
    self._docs: collections.deque = collections.deque()  # (parent state before it, tokens int32[n]).
    self._offset = 0  # tokens of docs[0] already consumed.

  def __next__(self) -> dict[str, np.ndarray]:
    need = self._seq_len + 1
    while sum(len(t) for _, t in self._docs) - self._offset < need:
      state = self._parent.get_state()
      self._docs.append((state, np.asarray(next(self._parent), np.int32)))
    pieces, segments, taken, start = [], [], 0, self._offset
    for k, (_, ids) in enumerate(self._docs):
      piece = ids[start : start + need - taken]
      pieces.append(piece)
      segments.append(np.full(len(piece), k + 1, np.int32))
      taken, start = taken + len(piece), 0
      if taken == need:
        break
    self._offset += self._seq_len
    while self._docs and self._offset >= len(self._docs[0][1]):
      self._offset -= len(self._docs.popleft()[1])
    tokens = np.concatenate(pieces)
    ones = np.ones((self._seq_len,), np.float32)
    out = {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": ones, "answer_mask": ones.copy()}
    if self._segment_ids:
      out["segment_ids"] = np.concatenate(segments)[:-1]
    if self._positions:  # per document, from 0 at its first token in this window
      out["positions"] = np.concatenate([np.arange(len(s), dtype=np.int32) for s in segments])[:-1]
    return out

  def get_state(self) -> dict[str, Any]:
    parent = self._docs[0][0] if self._docs else self._parent.get_state()
    return {"parent": parent, "offset": int(self._offset)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._docs.clear()
    self._offset = int(state["offset"])


class PackIterDataset(grain.IterDataset):
  """Packs an IterDataset of token arrays (documents, each ending in EOS) into training windows.

  Each element: `inputs` / `targets` int32[seq_len] (targets = inputs shifted by one), `loss_mask` /
  `answer_mask` float32[seq_len] (ones); with `segment_ids=True` also `segment_ids` int32[seq_len] of
  the inputs (1 for the document the window starts in, +1 at each later document); with
  `positions=True` also `positions` int32[seq_len], each input's position in its document counted from
  the window's start or the document's first token, whichever is later (what `model.document_mask`
  reads: attention stays where the positions run on without a restart at 0).
  """

  def __init__(
    self, parent: grain.IterDataset, seq_len: int, segment_ids: bool = False, positions: bool = False
  ):
    super().__init__(parent)
    if seq_len < 1:
      raise ValueError(f"config.data.seq_len={seq_len} must be >= 1.")
    self._seq_len, self._segment_ids, self._positions = int(seq_len), bool(segment_ids), bool(positions)

  def __iter__(self) -> grain.DatasetIterator:
    return _PackIterator(self._parent.__iter__(), self._seq_len, self._segment_ids, self._positions)
