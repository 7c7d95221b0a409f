"""Timers for the training loop: start-up phases for the compile report, and the step time behind
tokens/s and MFU, which leaves out checkpointing and evaluation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Phases:
  """Named wall-clock durations in seconds: `with phases('compile'): ...` adds `compile_s`."""

  def __init__(self, initial: dict[str, float] | None = None, clock: Callable[[], float] = time.perf_counter):
    self.seconds: dict[str, float] = dict(initial or {})
    self._clock = clock

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    t0 = self._clock()
    try:
      yield
    finally:
      key = f"{name}_s"
      self.seconds[key] = self.seconds.get(key, 0.0) + self._clock() - t0


class StepTimer:
  """Training-step wall time between two log lines, excluding the time spent in `excluded()` blocks
  (checkpoint saves, evaluations), so that tokens/s and MFU measure training steps only."""

  def __init__(self, step: int, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._step, self._start, self._excluded = step, clock(), 0.0

  @contextlib.contextmanager
  def excluded(self) -> Iterator[None]:
    t0 = self._clock()
    try:
      yield
    finally:
      self._excluded += self._clock() - t0

  def steps_per_s(self, step: int) -> float:
    """Steps per second of training time since the previous call (or the start); starts a new interval."""
    now = self._clock()
    seconds = max(now - self._start - self._excluded, 1e-9)
    rate = (step - self._step) / seconds
    self._step, self._start, self._excluded = step, now, 0.0
    return rate
