"""Multi-digit multiplication in the format of Deng et al. 2023 (implicit CoT; docs/methods.md §5).

Line format (github da03/implicit_chain_of_thought, `data/{4,5}_by_{4,5}_mult/test_bigbench.txt`):

  `A * B||<CoT> #### C`

every number written digit by digit, separated by spaces, least-significant digit first. Operands have
exactly n digits (most-significant digit non-zero: it is the LAST digit shown); C = A*B is zero-padded
to 2n digits. The CoT lists the partial products p_j = A * b_j * 10^j (b_j the j-th digit of B, j =
0..n-1), each zero-padded to n+1+j digits, joined by ` + `; after p_j for j = 1..n-2 (the 2nd to the
(n-1)-th partial product) the running sum p_0 + ... + p_j follows in `( ... )`, padded like p_j. E.g.
(3x3) `1 2 3 * 4 5 6||4 8 2 1 + 0 5 0 6 1 ( 4 3 3 7 1 ) + 0 0 6 2 9 1 #### 4 3 9 4 3 1`.

Question / answer split: question = `A * B||` (the `||` is the delimiter that tells the model the
answer starts), answer = `<CoT> #### C` with CoT and `#### C` without: the official no-CoT target keeps
the marker (`extract_answer` in da03/implicit_chain_of_thought `src/data.py` returns `'####' + C`).
`marker=False` (`config.data.multiplication.answer_marker=False`) gives the bare `C` instead, for
comparisons where four constant tokens before C would act as free pause tokens. `format_line` is
question + answer with no space between them, so with CoT it is byte for byte a line of the official
files. The tokenizer drops spaces (one id per character
of `0123456789*+()#|`), so `Example.text` (joined by a space) has the same tokens as the line.

Splits: train draws A, B uniformly among n-digit numbers, rejecting pairs in the hash test region
(`base.in_test_region` of the question) and, when an eval file is configured, every pair of that file
in either order. Test reads line `index` of the eval file when one is configured (`eval_file`, where
`{n}` is replaced by num_digits), else draws pairs from the hash test region like arithmetic does.
Each example is a pure function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

from lime_jax.data import base
from lime_jax.data.tokenizer import CharTokenizer
from lime_jax.runtime import options
from lime_jax.runtime.options import option

ALPHABET = "0123456789*+()#|"
_MAX_ATTEMPTS = 100_000
_MAX_DIGITS = 18  # operands stay exact in int64 draws.


def digits(value: int, width: int) -> str:
  """`value` zero-padded to `width` digits, least-significant first, space-separated."""
  text = str(value)
  if value < 0 or len(text) > width:
    raise ValueError(f"{value} does not fit in {width} digits.")
  return " ".join(text.zfill(width)[::-1])


def parse_digits(text: str) -> int:
  """Inverse of `digits`: the integer written least-significant first."""
  return int("".join(text.split())[::-1])


def chain_of_thought(a: int, b: int, n: int) -> str:
  """Partial products of a*b (b's digits from least significant) with the running sums."""
  parts, total = [], 0
  for j in range(n):
    partial = a * ((b // 10**j) % 10) * 10**j
    total += partial
    parts.append(digits(partial, n + 1 + j))
    if 1 <= j <= n - 2:
      parts[-1] += f" ( {digits(total, n + 1 + j)} )"
  return " + ".join(parts)


def format_example(a: int, b: int, n: int, cot: bool, marker: bool = True) -> base.Example:
  """Example of a*b with n-digit operands: question `A * B||`, answer `[CoT] #### C`; without CoT,
  `marker=False` drops the `####` (answer `C`)."""
  for name, value in (("a", a), ("b", b)):
    if not 10 ** (n - 1) <= value < 10**n:
      raise ValueError(f"operand {name}={value} does not have exactly n={n} digits.")
  product = digits(a * b, 2 * n)
  if cot:
    answer = f"{chain_of_thought(a, b, n)} #### {product}"
  else:
    answer = f"#### {product}" if marker else product
  return base.Example(question=f"{digits(a, n)} * {digits(b, n)}||", answer=answer)


def format_line(a: int, b: int, n: int, cot: bool, marker: bool = True) -> str:
  """The file line of a*b: `A * B||<CoT> #### C` with CoT, `A * B||#### C` without (`A * B||C` with
  `marker=False`)."""
  example = format_example(a, b, n, cot, marker)
  return example.question + example.answer


def parse_operands(line: str) -> tuple[int, int]:
  """(A, B) of a line `A * B||...` (digits least-significant first)."""
  question = line.split("||", 1)[0]
  a_text, b_text = question.split(" * ")
  return parse_digits(a_text), parse_digits(b_text)


OFFICIAL = "official"  # `eval_file` value naming the packaged copy of the official test files.
OFFICIAL_DIGITS = (4, 5)  # the official files ship for 4x4 and 5x5 only.


def check_official_digits(n: int) -> None:
  """Raises, naming the field, unless the official test file exists for n x n (config validation too)."""
  if n not in OFFICIAL_DIGITS:
    raise ValueError(
      f"config.data.multiplication.eval_file='official' exists only for num_digits in "
      f"{OFFICIAL_DIGITS}, got num_digits={n}; set eval_file to a path or to ''."
    )


@dataclasses.dataclass(frozen=True)
class MultiplicationConfig:
  """`config.data.multiplication`: the settings of `MultiplicationTask` (Deng et al. format,
  docs/methods.md §5)."""

  num_digits: int = option(
    4,
    "n x n digits; operands have exactly n digits.",
    check=options.within(1, _MAX_DIGITS, note="the paper: 4, 5"),
  )
  cot: bool = option(False, "answer `<partial products> #### C` instead of `#### C`.")
  answer_marker: bool = option(
    True,
    "without CoT: keep the `####` before C, as the official no-CoT target (da03/implicit_chain_of_thought "
    "src/data.py extract_answer); False: the bare product C.",
  )
  eval_file: str = option(
    "",
    "test file: 'official' (the packaged official 4x4 / 5x5 files) or a path ('{n}' -> num_digits); the "
    "test split reads it and train excludes its pairs; '' holds test pairs out by hash only.",
  )
  test_fraction: float = option(
    0.01, "hash-held-out share of the pair space (always off train).", check=base.TEST_FRACTION
  )

  def check_rules(self, prefix: str) -> None:
    if self.eval_file == OFFICIAL:
      check_official_digits(self.num_digits)


def official_test_file(n: int) -> pathlib.Path:
  """Packaged copy of the official n x n test file (`lime_jax/data/official/multiplication/`)."""
  check_official_digits(n)
  return pathlib.Path(__file__).parent / "official" / "multiplication" / f"{n}x{n}_test.txt"


def resolve_eval_file(eval_file: str, n: int) -> str:
  """`eval_file` with `{n}` replaced by n ('' stays ''); 'official' names the packaged copy."""
  if eval_file == OFFICIAL:
    return str(official_test_file(n))
  return eval_file.replace("{n}", str(n)) if eval_file else ""


def read_eval_file(path: str, n: int) -> list[tuple[int, int]]:
  """Operand pairs of an official test file; checks every line against `format_line` (with CoT)."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ValueError(
      f"config.data.multiplication.eval_file={path!r} does not exist; point it at "
      f"the {n}x{n} test file (a path; '{{n}}' is replaced by num_digits), use 'official' "
      "for the packaged 4x4 / 5x5 files, or set it to '' to hold out test pairs by hash."
    )
  pairs = []
  for line_no, line in enumerate(file.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      a, b = parse_operands(line)
      expected = format_line(a, b, n, cot=True)
    except ValueError as err:
      raise ValueError(f"{path}:{line_no}: not an {n}x{n} multiplication line ({err}): {line!r}.") from err
    if line != expected:
      raise ValueError(
        f"{path}:{line_no}: line differs from the {n}x{n} format: {line!r} != "
        f"{expected!r}; is num_digits={n} right for this file?"
      )
    pairs.append((a, b))
  if not pairs:
    raise ValueError(f"{path} holds no multiplication lines.")
  return pairs


class MultiplicationTask:
  """Deterministic, index-addressable n x n multiplication with disjoint train/test splits."""

  name = "multiplication"
  Config = MultiplicationConfig

  def __init__(
    self,
    num_digits: int = MultiplicationConfig.num_digits,
    cot: bool = MultiplicationConfig.cot,
    seed: int = 0,
    eval_file: str = MultiplicationConfig.eval_file,
    test_fraction: float = MultiplicationConfig.test_fraction,
    answer_marker: bool = MultiplicationConfig.answer_marker,
  ):
    settings = MultiplicationConfig(
      num_digits=num_digits,
      cot=cot,
      answer_marker=answer_marker,
      eval_file=eval_file,
      test_fraction=test_fraction,
    )
    base.check_settings(settings, self.name, seed)
    self.num_digits = num_digits
    self.cot = cot
    self.answer_marker = answer_marker
    self.seed = seed
    self.test_fraction = test_fraction
    self.eval_file = resolve_eval_file(eval_file or "", num_digits)
    self.eval_pairs = read_eval_file(self.eval_file, num_digits) if self.eval_file else []
    self._excluded = frozenset(self.eval_pairs) | frozenset((b, a) for a, b in self.eval_pairs)

  @functools.cached_property
  def tokenizer(self) -> CharTokenizer:
    return CharTokenizer(ALPHABET, drop_spaces=True)

  def _format(self, a: int, b: int) -> base.Example:
    return format_example(a, b, self.num_digits, self.cot, self.answer_marker)

  def draw_operands(self, rng: np.random.Generator) -> tuple[int, int]:
    """One candidate pair (a, b) of n-digit numbers for `example`, which redraws a pair on the other
    split's side of the hash or among the official test pairs."""
    low, high = 10 ** (self.num_digits - 1), 10**self.num_digits
    a, b = rng.integers(low, high, size=2, dtype=np.int64)
    return int(a), int(b)

  def example(self, split: str, index: int) -> base.Example:
    """The `index`-th example of `split` ('train' or 'test')."""
    sid = base.split_id(split)
    if index < 0:
      raise ValueError(f"index={index} must be >= 0.")
    if split == "test" and self.eval_pairs:
      if index >= len(self.eval_pairs):
        raise ValueError(
          f"test index {index} is past the {len(self.eval_pairs)} lines of "
          f"{self.eval_file}; set config.eval.num_examples <= {len(self.eval_pairs)}."
        )
      return self._format(*self.eval_pairs[index])
    want_test = split == "test"
    rng = np.random.default_rng([self.seed, sid, index])
    for _ in range(_MAX_ATTEMPTS):
      a, b = self.draw_operands(rng)
      example = self._format(a, b)
      if (
        base.in_test_region(example.question, self.test_fraction) == want_test
        and (a, b) not in self._excluded
      ):
        return example
    raise RuntimeError(
      f"no {split} pair found in {_MAX_ATTEMPTS} draws; raise "
      "config.data.multiplication.test_fraction or num_digits."
    )

  def longest_example(self) -> base.Example:
    """An example as long as any this task generates (all n x n examples have the same length)."""
    largest = 10**self.num_digits - 1
    return self._format(largest, largest)
