"""Counting tasks of "Transformers need glasses" (Glasses §3.2; docs/methods.md §5), as training and probe
tasks.

Variants (`config.data.counting.variant`; 'mixed' draws one per example), n items each:
  sum    `1+1+...+1=` -> `n` (n ones);
  ones   `count:11...1=` -> `n` (count the ones of an all-ones sequence);
  bits   `count:1011...=` -> number of ones (each digit is 1 with probability `p_one`, 0.7 in the paper);
  word   `count cat:the cat sat ...=` -> occurrences of the target word among n words drawn uniformly
         from `WORDS` (the target is uniform from `WORDS` too).
The metric is the absolute error of the predicted number vs n (up to 200 in the paper) and the
histogram of predicted values. Lengths are uniform in [min_length, max_length] for training; probes
ask for a given n (`example_at`). Deterministic from (seed, split, index[, length, variant]); the hash
test region (`base.in_test_region`) keeps train and test disjoint where the question space allows.
The tokenizer is `copying.glasses_tokenizer()`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lime_jax.data import base
from lime_jax.data.copying import LengthRange, LengthTask, _draw_in_split
from lime_jax.runtime import options
from lime_jax.runtime.options import option

VARIANTS = ("sum", "ones", "bits", "word")
WORDS = ("cat", "dog", "sun", "map", "red", "box", "pen", "cup")


@dataclasses.dataclass(frozen=True)
class CountingConfig(LengthRange):
  """`config.data.counting`: the settings of `CountingTask` (Glasses counting, docs/methods.md §5)."""

  variant: str = option(
    "mixed", "one of the variants (module doc), or 'mixed': one per example.", (*VARIANTS, "mixed")
  )
  min_length: int = option(
    1, "items to count, uniform in [min_length, max_length].", check=options.at_least(1)
  )
  max_length: int = option(32, "the most items to count.", check=options.at_least(1))
  p_one: float = option(0.7, "'bits': probability of a 1 (the paper: 0.7).", check=options.within(0.0, 1.0))
  test_fraction: float = option(
    0.1, "share of the question space reserved for the test split.", check=base.TEST_FRACTION
  )


def format_counting(variant: str, items: list, target: str = "") -> base.Example:
  """The example text of a list of items (digits, or words for 'word'); the answer is counted."""
  if variant == "sum":
    return base.Example(question="+".join("1" for _ in items) + "=", answer=str(len(items)))
  if variant in ("ones", "bits"):
    digits = "".join(str(int(x)) for x in items)
    return base.Example(question=f"count:{digits}=", answer=str(digits.count("1")))
  if variant == "word":
    return base.Example(
      question=f"count {target}:{' '.join(items)}=", answer=str(sum(w == target for w in items))
    )
  raise ValueError(f"counting variant {variant!r} is unknown; use one of {VARIANTS}.")


def draw_counting(variant: str, length: int, rng: np.random.Generator, p_one: float) -> base.Example:
  """A random example of `variant` with `length` items ('bits': each a 1 with probability `p_one`)."""
  if variant in ("sum", "ones"):
    return format_counting(variant, [1] * length)
  if variant == "bits":
    return format_counting(variant, list((rng.random(length) < p_one).astype(int)))
  words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=length)]
  return format_counting(variant, words, WORDS[int(rng.integers(0, len(WORDS)))])


class CountingTask(LengthTask):
  """Index-addressable counting task (see the module doc)."""

  name = "counting"
  variants = VARIANTS
  Config = CountingConfig

  def __init__(
    self,
    variant: str = CountingConfig.variant,
    min_length: int = CountingConfig.min_length,
    max_length: int = CountingConfig.max_length,
    p_one: float = CountingConfig.p_one,
    test_fraction: float = CountingConfig.test_fraction,
    seed: int = 0,
  ):
    settings = CountingConfig(
      variant=variant, min_length=min_length, max_length=max_length, p_one=p_one, test_fraction=test_fraction
    )
    base.check_settings(settings, self.name, seed)
    self.variant, self.min_length, self.max_length = variant, min_length, max_length
    self.p_one, self.test_fraction, self.seed = p_one, test_fraction, seed

  def example_at(self, split: str, index: int, length: int, variant: str | None = None) -> base.Example:
    """The `index`-th example of `split` with exactly `length` items.

    'sum' and 'ones' have one question per length, so they cannot be split: both splits return it.
    """
    variant, rng = self._variant_rng(split, index, length, variant)
    if variant in ("sum", "ones"):
      return draw_counting(variant, length, rng, self.p_one)
    return _draw_in_split(lambda: draw_counting(variant, length, rng, self.p_one), split, self.test_fraction)

  def longest_example(self) -> base.Example:
    """An example as long as any this task generates."""
    n = self.max_length
    if self.variant in ("word", "mixed"):
      return format_counting("word", [WORDS[0]] * n, WORDS[0])
    return format_counting(self.variant, [1] * n)
