"""Shared types of the task generators: `Example`, the `Task` protocol, split names, the test region.

A task is a pure, index-addressable generator: `task.example(split, index)` depends only on the task's
settings, its seed, the split and the index. Train and test are disjoint by construction: a question
belongs to the test region when a stable hash of its text falls below the test fraction
(`in_test_region`); the train split re-draws questions that fall in the region, the test split
re-draws those that fall outside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol

SPLITS = ("train", "test")
# data.loss_scope (config.validate checks it; pipeline.py builds the loss mask): CE on the answer (+eos)
# only, or on every non-pad token.
LOSS_SCOPES = ("answer", "all")
_HASH_BYTES = 8


@dataclasses.dataclass(frozen=True)
class Example:
  """One question/answer pair as text; the model reads the question and must produce the answer."""

  question: str
  answer: str

  @property
  def text(self) -> str:
    """The full line `question answer` (how the reference data files print it)."""
    return f"{self.question} {self.answer}"


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer (see `tokenizer.py`)."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  sep_id: int
  pause_start_id: int
  pause_id: int
  pause_end_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids) -> str: ...


class Task(Protocol):
  """A deterministic, index-addressable question/answer generator."""

  name: str

  @property
  def tokenizer(self) -> Tokenizer: ...

  def example(self, split: str, index: int) -> Example: ...


def split_id(split: str) -> int:
  """Index of `split` in SPLITS; raises a ValueError naming the valid splits."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}.")
  return SPLITS.index(split)


def hash_fraction(text: str) -> float:
  """A stable pseudo-uniform number in [0, 1) from the text (blake2b; same on every machine/run)."""
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=_HASH_BYTES).digest()
  return int.from_bytes(digest, "big") / float(1 << (8 * _HASH_BYTES))


def in_test_region(question: str, test_fraction: float) -> bool:
  """True when `question` is reserved for the test split."""
  return hash_fraction(question) < test_fraction


def check_split_args(field: str, test_fraction: float, seed: int) -> None:
  """Validates the arguments every hash-split task shares; `field` is its config section."""
  if not 0.0 < test_fraction < 0.5:
    raise ValueError(f"config.{field}.test_fraction={test_fraction} must be in (0, 0.5).")
  if seed < 0:
    raise ValueError(f"config.seed={seed} must be >= 0.")
