"""Workdir file access for local paths and bucket URLs (gs://...), through `etils.epath`.

Every reader and writer of a run directory (the probes' runner, `evaluate`, `sweep`, `compare`) goes
through these helpers instead of `os.path` / `open`, which refuse gs:// paths; local paths behave as
before. gs:// needs a GCS backend for epath (tensorflow's gfile, or `gcsfs` for fsspec), as on a TPU VM.
Paths stay strings, joined with '/' so that a URL keeps its `scheme://`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def is_remote(path: str) -> bool:
  return "://" in str(path)


def join(base: str, *parts: str) -> str:
  """`base/part/...` as a string; a URL keeps its scheme (os.path.normpath would fold `gs://`)."""
  if not is_remote(base):
    return os.path.join(base, *parts)
  return "/".join([str(base).rstrip("/"), *(str(p).strip("/") for p in parts)])


def absolute(path: str) -> str:
  """An absolute local path, or the URL unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def basename(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  """The names in folder `path`, sorted."""
  return sorted(p.name for p in epath.Path(path).iterdir())


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return epath.Path(path).read_text(encoding="utf-8")


def write_text(path: str, text: str) -> None:
  epath.Path(path).write_text(text, encoding="utf-8")


def replace_text(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all: to a temporary name beside it, then renamed over it
  (a local rename is atomic; a bucket object is written whole anyway)."""
  tmp = epath.Path(path + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(epath.Path(path))


def remove(path: str) -> None:
  """Deletes a file."""
  epath.Path(path).unlink()


def write_bytes(path: str, data: bytes) -> None:
  epath.Path(path).write_bytes(data)


def append_text(path: str, text: str) -> None:
  """Appends to a file (a URL is rewritten whole: buckets have no append)."""
  p = epath.Path(path)
  if is_remote(path):
    p.write_text((p.read_text(encoding="utf-8") if p.exists() else "") + text, encoding="utf-8")
  else:
    with p.open("a", encoding="utf-8") as f:
      f.write(text)


def read_json(path: str) -> Any:
  return json.loads(read_text(path))
