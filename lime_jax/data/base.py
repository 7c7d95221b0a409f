"""Shared types of the task generators: `Example`, the `Task` protocol, split names, the test region.

A task is a pure, index-addressable generator: `task.example(split, index)` depends only on the task's
settings, its seed, the split and the index. Its settings are a frozen dataclass declared in its module
(`Task.Config`, the `config.data.<task>` section: defaults, docs, choices, ranges and the section's own
rules, lime_jax/runtime/options.py); the task checks them when built (`check_settings`) and the config's
validation asks the same declarations, so each rule is written once, in the task's module.

Train and test are disjoint by construction: a question belongs to the test region when a stable hash of
its text falls below the test fraction (`in_test_region`); the train split re-draws questions that fall in
the region, the test split re-draws those that fall outside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol

from lime_jax.runtime import options

SPLITS = ("train", "test")
# data.loss_scope (config.validate checks it; pipeline.py builds the loss mask): CE on the answer (+eos)
# only, or on every non-pad token.
LOSS_SCOPES = ("answer", "all")
_HASH_BYTES = 8
# The range of every hash-split task's `test_fraction` (its share of the question space).
TEST_FRACTION = options.within(0.0, 0.5, open_low=True, open_high=True)
# The range of `config.seed` (declared with the field; a task built directly checks its seed against it).
SEED = options.at_least(0)


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


def check_settings(settings: Any, name: str, seed: int) -> None:
  """Checks a task's settings (an instance of its `Config`: declared types, choices, ranges and the
  section's rules) as `config.data.<name>`, and its seed; raises a ConfigError naming the field."""
  options.check_section(type(settings), settings, f"data.{name}")
  options.check_value("seed", int, seed, checks=(SEED,))
