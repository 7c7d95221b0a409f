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


def records_up_to(text: str, step: int, drop_eval_at_step: bool = False) -> str:
  """The JSONL lines of `text` whose step is <= `step` (a line cut short by a kill is dropped too);
  with `drop_eval_at_step`, also the eval records of `step` itself (a finished run started again
  evaluates its final step again)."""
  kept = []
  for line in text.splitlines(keepends=True):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if not (line.endswith("\n") and isinstance(record, dict)):
      continue
    record_step = int(record.get("step", 0))
    redone = drop_eval_at_step and record_step == step and record.get("split") == "eval"
    if record_step <= step and not redone:
      kept.append(line)
  return "".join(kept)


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl, WORKDIR/tensorboard/ and the console.

  A resumed run calls `start_at(step)` first: the records of later steps, which the run is about to
  replay, are dropped from metrics.jsonl, and TensorBoard's new event file starts with `purge_step` =
  step + 1, so TensorBoard hides the older files' events from that step on (one point per step).
  """

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, stream=None):
    self.enabled = enabled
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self._workdir = workdir
    self._jsonl = None
    self._tb = None
    self._purge_step: int | None = None
    self._sinks: list[Any] = []  # more sinks (`add_sink`): objects with log(step, scalars) and close()
    if enabled:
      make_dirs(workdir)
      self._jsonl = self._open_jsonl()

  def _open_jsonl(self):
    jsonl = os.path.join(self._workdir, "metrics.jsonl")
    return _RewrittenFile(jsonl) if is_remote(self._workdir) else open(jsonl, "a", encoding="utf-8")

  def _tensorboard(self):
    """The SummaryWriter, created at the first write (with the purge step of `start_at`)."""
    if self._tb is None:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # TensorBoard output is optional.
        self._tb = False
        return None
      self._tb = SummaryWriter(os.path.join(self._workdir, "tensorboard"), purge_step=self._purge_step)
    return self._tb or None

  def start_at(self, step: int, redo_final_eval: bool = False) -> None:
    """The run continues after `step`: drop the metrics of later steps (see the class docstring), and
    with `redo_final_eval` (the run restored its final step) the eval records of `step` itself."""
    if not self.enabled:
      return
    self._jsonl.close()
    path = epath.Path(self._workdir) / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    kept = records_up_to(text, step, drop_eval_at_step=redo_final_eval)
    if kept != text and is_remote(self._workdir):
      path.write_text(kept)
    elif kept != text:  # a kill mid-rewrite keeps the old file
      with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(kept)
      os.replace(f"{path}.tmp", path)
    self._jsonl = self._open_jsonl()
    if self._tb:
      self._tb.close()
    self._tb, self._purge_step = None, step + 1

  def logged(self, step: int, split: str = "train") -> dict[str, float]:
    """The scalars metrics.jsonl holds for `step` and `split` ({} when none, or when disabled)."""
    path = epath.Path(self._workdir) / "metrics.jsonl"
    if not self.enabled or not path.exists():
      return {}
    self._jsonl.flush()
    found: dict[str, float] = {}
    for line in records_up_to(path.read_text(), step).splitlines():
      record = json.loads(line)
      if record.get("step") == step and record.get("split") == split:
        found = {k: v for k, v in record.items() if k not in ("step", "split", "time")}
    return found

  def write(self, step: int, scalars: dict[str, Any], prefix: str = "train") -> dict[str, float]:
    values = {k: _scalar(v) for k, v in scalars.items()}
    if not self.enabled:
      return values
    record = {"step": int(step), "split": prefix, "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    tb = self._tensorboard()
    if tb is not None:
      for k, v in values.items():
        tb.add_scalar(f"{prefix}/{k}", v, step)
      tb.flush()
    for sink in self._sinks:
      sink.log(int(step), {f"{prefix}/{k}": v for k, v in values.items()})
    return values

  def add_sink(self, sink: Any) -> None:
    """Also sends every `write` to `sink` (`.log(step, {'split/name': value})`, `.close()`), e.g. a
    `WandbSink`; ignored where the writer is disabled (processes other than 0)."""
    if self.enabled and sink is not None:
      self._sinks.append(sink)

  def progress(self, step: int, values: dict[str, float], elapsed_s: float, steps_done: int) -> None:
    """One console line: step/total, loss, lr, tokens/s, MFU and ETA."""
    if not self.enabled:
      return
    eta = elapsed_s / max(steps_done, 1) * (self.total_steps - step)
    keys = ("loss", "exact_match", "learning_rate", "grad_norm", "tokens_per_s", "mfu_pct")
    parts = [f"{k}={values[k]:.4g}" for k in keys if k in values]
    pct = 100.0 * step / max(self.total_steps, 1)
    print(
      f"[{step:>6d}/{self.total_steps} {pct:5.1f}%] " + " ".join(parts) + f" eta={format_duration(eta)}",
      file=self.stream,
      flush=True,
    )

  def text(self, line: str) -> None:
    if self.enabled:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb:
      self._tb.close()
    for sink in self._sinks:
      sink.close()
    self._sinks = []


class WandbSink:
  """Weights & Biases run of a training run (`config.train.wandb`; off while `project` is '').

  The run id is kept in WORKDIR/wandb_id.txt, so a resumed training run logs into the same wandb run.
  """

  def __init__(self, settings: Any, workdir: str, run_config: dict[str, Any]):
    try:
      import wandb
    except ImportError:
      raise ImportError(
        f"config.train.wandb.project={settings.project!r} needs the wandb package: pip install -e "
        "'.[wandb]' (or pip install wandb), or set --config.train.wandb.project='' to log to "
        "TensorBoard and metrics.jsonl only."
      ) from None
    id_path = epath.Path(workdir) / "wandb_id.txt"
    name = settings.name or os.path.basename(os.path.normpath(str(workdir)))
    if id_path.exists():
      run_id = id_path.read_text().strip()
    else:
      safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
      run_id = f"{safe}-{os.urandom(4).hex()}"
      id_path.write_text(run_id)
    self._run = wandb.init(
      project=settings.project,
      entity=settings.entity or None,
      name=name,
      id=run_id,
      resume="allow",
      mode=settings.mode,
      config=run_config,
      dir=None if is_remote(workdir) else str(workdir),
    )

  def log(self, step: int, scalars: dict[str, float]) -> None:
    self._run.log(scalars, step=step)

  def close(self) -> None:
    self._run.finish()


def make_wandb_sink(config: Any, workdir: str, enabled: bool = True) -> WandbSink | None:
  """A `WandbSink` when `config.train.wandb.project` is set and `enabled` (process 0), else None; wandb
  is imported only then."""
  settings = config.train.wandb
  if not (enabled and settings.project):
    return None
  return WandbSink(settings, workdir, json.loads(config.to_json_best_effort()))
