"""Copying tasks of "Transformers need glasses" (Glasses §3.1; docs/methods.md §5), as training and probe
tasks.

Variants (`config.data.copying.variant`; 'mixed' draws one per example):
  last         `last:ddd...dc=` -> `c`: n digits, n-1 copies of a digit d, then a final digit c;
  first        `first:cdd...d=` -> `c`: the first digit c, then n-1 copies of d;
  hint         `last:ddd...dc It's not necessarily a 1, check carefully=` -> `c` (the paper's hint);
  interleaved  `last:abab...c=` -> `c`: n-1 digits alternating a, b, then a final digit c.
d, a, b and c are uniform digits (c may equal d). The paper's prompts are the special cases
`canonical_example`: last = 1...10, first = 01...1, hint = 1...10 + hint, interleaved = 1010...0
(the interleaved pattern is not specified by the SPEC; this is our choice). Lengths n are uniform in
[min_length, max_length] for training; probes ask for a given n (`example_at`).

Every example is a pure function of (seed, split, index[, length, variant]): it draws from
`np.random.default_rng([seed, split_id, index, ...])` until the question lies in the split's side of
the hash test region (`base.in_test_region`), so train and test are disjoint as sets of questions.

Tokenizer: `glasses_tokenizer()`, one id per character of `GLASSES_ALPHABET` (spaces are tokens here,
since the hint and the counting sentences are made of words); shared with `counting.py` so that one
model can be probed on both families.
"""

from __future__ import annotations

import abc
import dataclasses
import functools

import numpy as np

from lime_jax.data import base
from lime_jax.data.tokenizer import CharTokenizer
from lime_jax.runtime import options
from lime_jax.runtime.options import option

GLASSES_ALPHABET = " 0123456789abcdefghijklmnopqrstuvwxyzI',:=+?."
VARIANTS = ("last", "first", "hint", "interleaved")
HINT = " It's not necessarily a 1, check carefully"
_MAX_ATTEMPTS = 10_000


@functools.cache
def glasses_tokenizer() -> CharTokenizer:
  """The character tokenizer of the copying and counting tasks (spaces are tokens)."""
  return CharTokenizer(GLASSES_ALPHABET, drop_spaces=False)


class LengthRange:
  """The rule of a length-indexed task's settings (`check_rules`): min_length <= max_length."""

  min_length: int
  max_length: int

  def check_rules(self, prefix: str) -> None:
    if self.min_length > self.max_length:
      options.fail(
        f"{prefix}.min_length/max_length",
        (self.min_length, self.max_length),
        "must satisfy 1 <= min_length <= max_length.",
      )


@dataclasses.dataclass(frozen=True)
class CopyingConfig(LengthRange):
  """`config.data.copying`: the settings of `CopyingTask` (Glasses copying, docs/methods.md §5)."""

  variant: str = option(
    "mixed", "one of the variants (module doc), or 'mixed': one per example.", (*VARIANTS, "mixed")
  )
  min_length: int = option(
    1, "sequence length in digits, uniform in [min_length, max_length].", check=options.at_least(1)
  )
  max_length: int = option(32, "the longest sequence, in digits.", check=options.at_least(1))
  test_fraction: float = option(
    0.1, "share of the question space reserved for the test split.", check=base.TEST_FRACTION
  )


def format_copying(variant: str, digits: list[int], answer: int) -> base.Example:
  """The example text of a digit sequence (the answer is given, so probes can build any prompt)."""
  seq = "".join(str(x) for x in digits)
  if variant == "first":
    question = f"first:{seq}="
  elif variant == "hint":
    question = f"last:{seq}{HINT}="
  elif variant in ("last", "interleaved"):
    question = f"last:{seq}="
  else:
    raise ValueError(f"copying variant {variant!r} is unknown; use one of {VARIANTS}.")
  return base.Example(question=question, answer=str(answer))


def draw_copying(variant: str, length: int, rng: np.random.Generator) -> base.Example:
  """A random example of `variant` with `length` digits."""
  d, a, b, c = (int(x) for x in rng.integers(0, 10, size=4))
  if variant == "first":
    return format_copying(variant, [c] + [d] * (length - 1), c)
  if variant == "interleaved":
    body = [a if i % 2 == 0 else b for i in range(length - 1)]
    return format_copying(variant, body + [c], c)
  return format_copying(variant, [d] * (length - 1) + [c], c)


def canonical_example(variant: str, length: int) -> base.Example:
  """The paper's prompt of `variant` with `length` digits (answer 0)."""
  if variant == "first":
    return format_copying(variant, [0] + [1] * (length - 1), 0)
  if variant == "interleaved":
    return format_copying(variant, [1 - i % 2 for i in range(length - 1)] + [0], 0)
  return format_copying(variant, [1] * (length - 1) + [0], 0)


class LengthTask(abc.ABC):
  """What the copying and counting tasks share: the glasses tokenizer, variant choice ('mixed' cycles
  through `variants` by index) and `example` = `example_at` with a length uniform in [min, max]."""

  name: str
  variants: tuple[str, ...]
  variant: str
  min_length: int
  max_length: int
  seed: int

  @property
  def tokenizer(self) -> CharTokenizer:
    return glasses_tokenizer()

  @abc.abstractmethod
  def example_at(self, split: str, index: int, length: int, variant: str | None = None) -> base.Example:
    """The `index`-th example of `split` with exactly `length` items (each task defines it)."""

  def _variant_rng(
    self, split: str, index: int, length: int, variant: str | None
  ) -> tuple[str, np.random.Generator]:
    """The variant of example `index` (`variant` or the task's) and its generator."""
    variant = variant or self.variant
    if variant == "mixed":
      variant = self.variants[index % len(self.variants)]
    key = [self.seed, base.split_id(split), index, length, self.variants.index(variant)]
    return variant, np.random.default_rng(key)

  def example(self, split: str, index: int) -> base.Example:
    """The `index`-th example of `split`: length uniform in [min_length, max_length]."""
    if index < 0:
      raise ValueError(f"index={index} must be >= 0.")
    rng = np.random.default_rng([self.seed, base.split_id(split), index])
    length = int(rng.integers(self.min_length, self.max_length + 1))
    return self.example_at(split, index, length)


class CopyingTask(LengthTask):
  """Index-addressable copying task with hash-disjoint train/test splits (see the module doc)."""

  name = "copying"
  variants = VARIANTS
  Config = CopyingConfig

  def __init__(
    self,
    variant: str = CopyingConfig.variant,
    min_length: int = CopyingConfig.min_length,
    max_length: int = CopyingConfig.max_length,
    test_fraction: float = CopyingConfig.test_fraction,
    seed: int = 0,
  ):
    settings = CopyingConfig(
      variant=variant, min_length=min_length, max_length=max_length, test_fraction=test_fraction
    )
    base.check_settings(settings, self.name, seed)
    self.variant, self.min_length, self.max_length = variant, min_length, max_length
    self.test_fraction, self.seed = test_fraction, seed

  def example_at(self, split: str, index: int, length: int, variant: str | None = None) -> base.Example:
    """The `index`-th example of `split` with exactly `length` digits (probes: any length)."""
    variant, rng = self._variant_rng(split, index, length, variant)
    return _draw_in_split(lambda: draw_copying(variant, length, rng), split, self.test_fraction)

  def longest_example(self) -> base.Example:
    """An example as long as any this task generates (the hint variant at max_length)."""
    variant = "hint" if self.variant in ("hint", "mixed") else self.variant
    return format_copying(variant, [1] * self.max_length, 0)


def _draw_in_split(draw, split: str, test_fraction: float) -> base.Example:
  """Calls `draw()` until the example lies on `split`'s side of the hash test region.

  For tiny question spaces (e.g. length 1, 100 questions) one side may be empty for a variant; after
  `_MAX_ATTEMPTS` draws the last one is returned (probes at such lengths may then overlap train).
  """
  want_test = split == "test"
  example = draw()
  for _ in range(_MAX_ATTEMPTS):
    if base.in_test_region(example.question, test_fraction) == want_test:
      return example
    example = draw()
  return example
