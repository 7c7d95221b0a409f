"""Metric sinks: a console progress line with ETA, TensorBoard event files, and a JSONL file.

Only process 0 writes (the trainer passes `enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
from etils import epath


def _scalar(value: Any) -> float:
  return float(np.asarray(value))


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def is_remote(path: str) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in str(path)


def make_dirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def write_text(workdir: str, name: str, text: str) -> None:
  """WORKDIR/name <- text, for a local workdir or a gs:// one."""
  (epath.Path(workdir) / name).write_text(text)


class _RewrittenFile:
  """Append-only text file on object storage (gs://), which cannot append: rewritten on each flush."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._text = self._path.read_text() if self._path.exists() else ""

  def write(self, text: str) -> None:
    self._text += text

  def flush(self) -> None:
    self._path.write_text(self._text)

  def close(self) -> None:
    self.flush()


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl, WORKDIR/tensorboard/ and the console."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, stream=None):
    self.enabled = enabled
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self._jsonl = None
    self._tb = None
    if enabled:
      make_dirs(workdir)
      jsonl = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = _RewrittenFile(jsonl) if is_remote(workdir) else open(jsonl, "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard output is optional.
        self._tb = None

  def write(self, step: int, scalars: dict[str, Any], prefix: str = "train") -> dict[str, float]:
    values = {k: _scalar(v) for k, v in scalars.items()}
    if not self.enabled:
      return values
    record = {"step": int(step), "split": prefix, "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
      self._tb.flush()
    return values

  def progress(self, step: int, values: dict[str, float], elapsed_s: float, steps_done: int) -> None:
    """One console line: step/total, loss, lr, tokens/s, MFU and ETA."""
    if not self.enabled:
      return
    eta = elapsed_s / max(steps_done, 1) * (self.total_steps - step)
    keys = ("loss", "exact_match", "learning_rate", "grad_norm", "tokens_per_s", "mfu")
    parts = [f"{k}={values[k]:.4g}" for k in keys if k in values]
    pct = 100.0 * step / max(self.total_steps, 1)
    print(f"[{step:>6d}/{self.total_steps} {pct:5.1f}%] " + " ".join(parts) + f" eta={format_duration(eta)}",
          file=self.stream, flush=True)

  def text(self, line: str) -> None:
    if self.enabled:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
