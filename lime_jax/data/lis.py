"""Longest increasing subsequence (Feng et al. 2023; docs/methods.md §5), one token per number.

Generation follows github guyuntian/CoT_benchmark `LIS/data.py` (own code). Numbers lie in
[length + 1, number_range) (the paper: number_range = length + 150), so they never coincide with the
DP values 1..length of the chain of thought. A sequence of `length` numbers is drawn as:

1. k ~ uniform{1, 2, 3} runs and a planted total s ~ uniform[3, length];
2. s split into k run sizes: k=1: (s); k=2: (u, s-u), u ~ U[1, s//2 + 1];
   k=3: (u, v, s-u-v), u ~ U[1, s//3 + 1], v ~ U[1, (s-u)//2 + 1] (the last size may be 0);
3. each run: distinct values drawn without replacement, sorted increasingly; runs concatenated;
4. s distinct positions (sorted) receive the concatenated runs; the other positions are uniform.

The answer is the LIS length (strictly increasing). Chain of thought: dp_1 .. dp_L (dp_i = length of
the longest increasing subsequence ending at position i) followed by the answer, as CoT_benchmark's
`chain` data. Text format, tokens separated by spaces:
  direct  question `x_1 ... x_L =`, answer `k`
  CoT     question `x_1 ... x_L =`, answer `dp_1 ... dp_L = k`
(CoT_benchmark writes `<sep>` where this writes `=`.)

Tokenizer: `NumberTokenizer`, one id per number 0..number_range-1 plus `=`, after the 16 special ids.
Splits: `example(split, index)` draws from `np.random.default_rng([seed, split_id, index])` until the
question lies in the split's side of the hash test region (`base.in_test_region`), so train and test
are disjoint as sets of questions.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from lime_jax.data import base
from lime_jax.data import tokenizer as tok
from lime_jax.runtime import options
from lime_jax.runtime.options import option

SEPARATOR = "="
PAPER_RANGE_MARGIN = 150  # number_range = length + 150 in the paper.
_MAX_ATTEMPTS = 1_000_000


class NumberTokenizer:
  """One id per whitespace-separated word: the numbers 0..number_range-1, then `symbols`.

  Ids 0..15 are the shared specials of `tokenizer.py`; word w gets id 16 + its index. `decode` joins
  words with single spaces (specials as `<name>`) and drops trailing PADs.
  """

  pad_id = tok.PAD_ID
  bos_id = tok.BOS_ID
  eos_id = tok.EOS_ID
  sep_id = tok.SEP_ID
  pause_start_id = tok.PAUSE_START_ID
  pause_id = tok.PAUSE_ID
  pause_end_id = tok.PAUSE_END_ID
  num_special = tok.NUM_SPECIAL

  def __init__(self, number_range: int, symbols: Sequence[str] = (SEPARATOR,)):
    self.words = tuple(str(i) for i in range(number_range)) + tuple(symbols)
    if len(set(self.words)) != len(self.words):
      raise ValueError(f"symbols {symbols!r} repeat a word.")
    self.vocab_size = tok.NUM_SPECIAL + len(self.words)
    self._word_to_id = {w: tok.NUM_SPECIAL + i for i, w in enumerate(self.words)}

  def encode(self, text: str) -> list[int]:
    """Ids of the whitespace-separated words of `text`; no BOS/EOS added."""
    ids = []
    for word in text.split():
      if word not in self._word_to_id:
        raise ValueError(
          f"word {word!r} of {text!r} is not in the vocabulary (numbers 0.."
          f"{len(self.words) - 2} and {self.words[-1]!r})."
        )
      ids.append(self._word_to_id[word])
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Words of `ids` joined by spaces, specials as `<name>`, trailing PADs dropped."""
    values = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
    while values and values[-1] == tok.PAD_ID:
      values.pop()
    out = []
    for i in values:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size}).")
      out.append(tok.SPECIAL_NAMES[i] if i < tok.NUM_SPECIAL else self.words[i - tok.NUM_SPECIAL])
    return " ".join(out)


def lis_ending_at(values: Sequence[int]) -> list[int]:
  """dp_i = length of the longest strictly increasing subsequence ending at i (O(n log n))."""
  tails: list[int] = []  # tails[k] = smallest tail of an increasing subsequence of length k+1.
  out = []
  for v in values:
    k = bisect.bisect_left(tails, v)
    if k == len(tails):
      tails.append(v)
    else:
      tails[k] = v
    out.append(k + 1)
  return out


def _run_sizes(rng: np.random.Generator, total: int) -> list[int]:
  """Sizes of 1-3 increasing runs that together plant `total` numbers."""
  runs = int(rng.integers(1, 4))
  if runs == 1:
    return [total]
  if runs == 2:
    first = int(rng.integers(1, total // 2 + 2))
    return [first, total - first]
  first = int(rng.integers(1, total // 3 + 2))
  second = int(rng.integers(1, (total - first) // 2 + 2))
  return [first, second, total - first - second]


def draw_sequence(rng: np.random.Generator, length: int, low: int, high: int) -> list[int]:
  """A length-`length` sequence in [low, high) with 1-3 planted increasing runs (CoT_benchmark)."""
  total = int(rng.integers(3, length + 1))
  planted = np.concatenate(
    [np.sort(rng.choice(high - low, size, replace=False)) + low for size in _run_sizes(rng, total)]
  )
  positions = np.sort(rng.choice(length, total, replace=False))
  seq = rng.integers(low, high, size=length)
  seq[positions] = planted
  return [int(v) for v in seq]


def question_text(values: Sequence[int]) -> str:
  """The question `x_1 ... x_L =`."""
  return f"{' '.join(map(str, values))} {SEPARATOR}"


def format_example(values: Sequence[int], cot: bool) -> base.Example:
  """Example of a sequence: question `x_1 ... x_L =`, answer `k` or `dp_1 ... dp_L = k`."""
  dp = lis_ending_at(values)
  answer = str(max(dp))
  if cot:
    answer = f"{' '.join(map(str, dp))} {SEPARATOR} {answer}"
  return base.Example(question=question_text(values), answer=answer)


@dataclasses.dataclass(frozen=True)
class LisConfig:
  """`config.data.lis`: the settings of `LisTask` (longest increasing subsequence, Feng et al.;
  docs/methods.md §5)."""

  length: int = option(
    50,
    "numbers per sequence (the paper: 50 / 80 / 100).",
    check=options.at_least(3, "the paper: 50, 80, 100"),
  )
  cot: bool = option(False, "answer `dp_1 ... dp_L = k` instead of `k`.")
  number_range: int = option(
    0, f"numbers in [length+1, number_range); 0: length + {PAPER_RANGE_MARGIN} (the paper)."
  )
  test_fraction: float = option(
    0.01, "share of the sequence space reserved for the test split.", check=base.TEST_FRACTION
  )

  def check_rules(self, prefix: str) -> None:
    if self.number_range and self.number_range < 2 * self.length + 1:
      options.fail(
        f"{prefix}.number_range",
        self.number_range,
        f"must be 0 (length + {PAPER_RANGE_MARGIN}, the paper) or >= 2*length+1 = {2 * self.length + 1} "
        "(numbers lie in [length+1, number_range); a planted run can need `length` distinct values).",
      )


class LisTask:
  """Deterministic, index-addressable LIS-length task with disjoint train/test splits."""

  name = "lis"
  Config = LisConfig

  def __init__(
    self,
    length: int = LisConfig.length,
    cot: bool = LisConfig.cot,
    number_range: int = LisConfig.number_range,
    test_fraction: float = LisConfig.test_fraction,
    seed: int = 0,
  ):
    settings = LisConfig(length=length, cot=cot, number_range=number_range, test_fraction=test_fraction)
    base.check_settings(settings, self.name, seed)
    number_range = number_range or length + PAPER_RANGE_MARGIN
    self.length = length
    self.cot = cot
    self.number_range = number_range
    self.test_fraction = test_fraction
    self.seed = seed

  @functools.cached_property
  def tokenizer(self) -> NumberTokenizer:
    return NumberTokenizer(self.number_range)

  def example(self, split: str, index: int) -> base.Example:
    """The `index`-th example of `split` ('train' or 'test')."""
    sid = base.split_id(split)
    if index < 0:
      raise ValueError(f"index={index} must be >= 0.")
    want_test = split == "test"
    rng = np.random.default_rng([self.seed, sid, index])
    for _ in range(_MAX_ATTEMPTS):
      values = draw_sequence(rng, self.length, self.length + 1, self.number_range)
      if base.in_test_region(question_text(values), self.test_fraction) == want_test:
        return format_example(values, self.cot)
    raise RuntimeError(
      f"no {split} sequence found in {_MAX_ATTEMPTS} draws; raise config.data.lis.test_fraction."
    )

  def longest_example(self) -> base.Example:
    """An example as long (in tokens) as any this task generates (all have the same length)."""
    return format_example(list(range(self.length + 1, 2 * self.length + 1)), self.cot)
