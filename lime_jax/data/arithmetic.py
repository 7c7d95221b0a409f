"""Arithmetic expressions over the integers mod a prime (Feng et al. 2023; docs/methods.md §5).

Generation follows the procedure of github guyuntian/CoT_benchmark `arithmetic/data.py` (own code):

1. start from one uniform number v in [0, p); v is the answer;
2. `num_operators` times: pick one number of the expression uniformly, and replace it by `a op b`
   with value equal to that number: a uniform, op uniform in + - * /, b solved for (a draw that makes
   this impossible, such as `0 * b = 3`, is redrawn; `0 / b` takes a uniform non-zero b);
3. the new `a op b` is put in parentheses only where precedence needs it: always right after `/`;
   for + and - also right after `*` or `-`, or right before `*` or `/`. The first expansion has no
   neighbours, so the outermost expression never has parentheses.

`/` is multiplication by the modular inverse and never divides by 0. Symbols are separated by single
spaces. Direct format: `7 - ( 10 - ( 1 + 6 * 8 ) ) = 2`. Chain of thought (CoT): the expressions of the
generation in reverse, each one reducing one operation of the previous one, joined by ` = `, e.g.
`1 + 2 * 3 = 1 + 6 = 7`. The question is the text up to and including the first `=`; the answer is the
rest (the result, or the whole chain ending in the result).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from lime_jax.data import base
from lime_jax.data.tokenizer import CharTokenizer
from lime_jax.runtime import options
from lime_jax.runtime.options import option

OPERATORS = ("+", "-", "*", "/")
ALPHABET = "0123456789+-*/()="
_MAX_ATTEMPTS = 1_000_000
_UNIFORM_BLOCK = 64


def is_prime(n: int) -> bool:
  """True for a prime n (trial division; moduli are small)."""
  return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
  """`config.data.arithmetic`: the settings of `ArithmeticTask`."""

  num_operators: int = option(4, "operators per expression (the paper: 4, 5, 6).", check=options.at_least(1))
  cot: bool = option(False, "answer with the chain of reductions (CoT) instead of the result only.")
  modulus: int = option(
    11,
    "numbers and results are mod this prime (the paper: 11).",
    check=options.satisfies(
      lambda p: is_prime(p) and p <= 100,
      "must be a prime <= 100 (division needs every non-zero number to have an inverse); the paper uses 11.",
    ),
  )
  test_fraction: float = option(
    0.01, "share of the expression space reserved for the test split.", check=base.TEST_FRACTION
  )


class _Uniforms:
  """Integer draws from one numpy Generator, fetched in blocks (one numpy call per 64 draws)."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._block = rng.random(_UNIFORM_BLOCK)
    self._next = 0

  def below(self, n: int) -> int:
    """A uniform integer in [0, n)."""
    if self._next == _UNIFORM_BLOCK:
      self._block = self._rng.random(_UNIFORM_BLOCK)
      self._next = 0
    u = self._block[self._next]
    self._next += 1
    return int(u * n)


def _operation_with_value(value: int, draws: _Uniforms, modulus: int) -> tuple[int, str, int]:
  """A uniform `(a, op, b)` with `a op b == value`; impossible draws are redrawn from scratch."""
  while True:
    a = draws.below(modulus)
    op = OPERATORS[draws.below(len(OPERATORS))]
    if op == "+":
      return a, op, (value - a) % modulus
    if op == "-":
      return a, op, (a - value) % modulus
    if op == "*":
      if a == 0:
        if value != 0:
          continue
        return a, op, draws.below(modulus)
      return a, op, (value * pow(a, -1, modulus)) % modulus
    # op == "/": a / b = value  <=>  b = a / value (b != 0).
    if a == 0 and value == 0:
      b = draws.below(modulus)
      if b == 0:
        continue
      return a, op, b
    if a == 0 or value == 0:
      continue
    return a, op, (a * pow(value, -1, modulus)) % modulus


def _needs_parentheses(tokens: list[str], pos: int, op: str) -> bool:
  """Whether `a op b` replacing tokens[pos] must be parenthesised to keep its value."""
  left = tokens[pos - 1] if pos > 0 else None
  right = tokens[pos + 1] if pos + 1 < len(tokens) else None
  if left == "/":
    return True
  return op in "+-" and (left in ("*", "-") or right in ("*", "/"))


def _expand(tokens: list[str], draws: _Uniforms, modulus: int) -> list[str]:
  """A copy of `tokens` with one uniformly chosen number replaced by an operation of equal value."""
  number_positions = [i for i, t in enumerate(tokens) if t.isdigit()]
  pos = number_positions[draws.below(len(number_positions))]
  a, op, b = _operation_with_value(int(tokens[pos]), draws, modulus)
  new = [str(a), op, str(b)]
  if _needs_parentheses(tokens, pos, op):
    new = ["(", *new, ")"]
  return tokens[:pos] + new + tokens[pos + 1 :]


def generate_chain(draws: _Uniforms, num_operators: int, modulus: int) -> list[list[str]]:
  """Token lists with num_operators, num_operators-1, ..., 0 operators (the CoT order)."""
  chain = [[str(draws.below(modulus))]]
  for _ in range(num_operators):
    chain.append(_expand(chain[-1], draws, modulus))
  return chain[::-1]


def format_example(chain: list[list[str]], cot: bool) -> base.Example:
  """Example from a chain (full expression first, single number last)."""
  question = " ".join(chain[0]) + " ="
  steps = chain[1:] if cot else chain[-1:]
  return base.Example(question=question, answer=" = ".join(" ".join(s) for s in steps))


class ArithmeticTask:
  """Deterministic, index-addressable arithmetic-expression task with disjoint train/test splits.

  `example(split, index)` is a pure function of (seed, split, index): it draws expressions from
  `np.random.default_rng([seed, split_id, index])` until one lies in the split's side of the test
  region (`base.in_test_region` on the question text, share `test_fraction`). Train and test are
  therefore disjoint as sets of questions; within a split examples are i.i.d. (repeats are possible
  but rare for >= 3 operators).
  """

  name = "arithmetic"
  Config = ArithmeticConfig

  def __init__(
    self,
    num_operators: int = ArithmeticConfig.num_operators,
    cot: bool = ArithmeticConfig.cot,
    modulus: int = ArithmeticConfig.modulus,
    test_fraction: float = ArithmeticConfig.test_fraction,
    seed: int = 0,
  ):
    settings = ArithmeticConfig(
      num_operators=num_operators, cot=cot, modulus=modulus, test_fraction=test_fraction
    )
    base.check_settings(settings, self.name, seed)
    self.num_operators = num_operators
    self.cot = cot
    self.modulus = modulus
    self.test_fraction = test_fraction
    self.seed = seed

  @property
  def alphabet(self) -> str:
    """Characters of every example text except spaces."""
    return ALPHABET

  @functools.cached_property
  def tokenizer(self) -> CharTokenizer:
    return CharTokenizer(self.alphabet, drop_spaces=True)

  def example(self, split: str, index: int) -> base.Example:
    """The `index`-th example of `split` ('train' or 'test')."""
    sid = base.split_id(split)
    if index < 0:
      raise ValueError(f"index={index} must be >= 0.")
    want_test = split == "test"
    draws = _Uniforms(np.random.default_rng([self.seed, sid, index]))
    for _ in range(_MAX_ATTEMPTS):
      chain = generate_chain(draws, self.num_operators, self.modulus)
      example = format_example(chain, self.cot)
      if base.in_test_region(example.question, self.test_fraction) == want_test:
        return example
    raise RuntimeError(
      f"no {split} expression found in {_MAX_ATTEMPTS} draws; raise "
      "config.data.arithmetic.test_fraction or num_operators."
    )

  def longest_example(self) -> base.Example:
    """A synthetic example at least as long (in symbols) as any this task generates.

    Not arithmetically valid: it bounds the sequence length (two-digit numbers everywhere and the
    maximum num_operators - 1 parenthesis pairs per expression) so the pipeline can check
    `data.seq_len` before training starts.
    """
    big = str(self.modulus - 1)

    def widest(num_ops: int) -> list[str]:
      tokens = [big]
      for k in range(num_ops):
        tokens = [big, "-", *(["(", *tokens, ")"] if k else tokens)]
      return tokens

    chain = [widest(k) for k in range(self.num_operators, -1, -1)]
    return format_example(chain, self.cot)
