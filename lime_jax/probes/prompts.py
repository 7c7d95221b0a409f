"""Natural-language prompts of the copying / counting probes for tokenizer-backed (pretrained) models,
the answer parser, and the parse-rate / histogram statistics (Glasses §3; docs/methods.md §5).

A model with its own subword tokenizer (`evaluate --hf=PATH`, or a run fine-tuned with an HF
tokenizer) is asked in words, as the paper asks Gemma; the synthetic `last:111=` format of the char
tokenizer stays for models trained on the synthetic tasks.

Copying (`COPY_STYLES`): the sequence is n-1 ones then a final digit c != 1 (the paper's 1...10 with c
uniform in {0, 2..9}), asked as
  direct       What is the last digit of the following sequence? 1110\nAnswer:
  hint         the same question followed by the paper's hint "It's not necessarily a 1, check carefully."
  cot          ... Let's think step by step.   (parsed after the last "answer", else the last number)
  few_shot     `FEW_SHOT` worked examples (shorter sequences, other digits) before the question
  commas       the sequence written with ", " between the digits (1, 1, 1, 0)
  interleaved  n-1 alternating digits 1, 0, 1, ... then c in {2..9} (the pattern is not 1 or 0)
Counting (`COUNT_STYLES`): how many ones in n ones (direct, cot, few_shot, commas), `sum` = "What is
1+1+...+1?" and `bits` = how many ones in n digits that are 1 with probability 0.7 (the paper's p).
The hint is a copying prompt only ("not necessarily a 1" has no counting counterpart).

Parsing: copying takes the first digit of the output, counting the first integer; cot takes the number
after the last "answer" (case-insensitive), else the last number. An output without a number is
*unparsed*: it is left out of the error and counted in `parse_rate` (an unparsed count used to score
as a prediction of 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

COPY_STYLES = ("direct", "hint", "cot", "few_shot", "commas", "interleaved")
COUNT_STYLES = ("direct", "cot", "few_shot", "commas", "sum", "bits")
HINT = "It's not necessarily a 1, check carefully."
COT = "Let's think step by step."
COPY_QUESTION = "What is the last digit of the following sequence?"
COUNT_QUESTION = "How many ones are there in the following sequence?"
FEW_SHOT = 3  # worked examples of the few-shot style.
MAX_NEW = {"cot": 48}  # greedy tokens decoded per style (others: `DEFAULT_MAX_NEW`).
DEFAULT_MAX_NEW = 6
P_ONE = 0.7  # 'bits': probability of a 1 (the paper's counting setting).
_INT = re.compile(r"-?\d+")
_ANSWER = re.compile(r"answer", re.IGNORECASE)


def _sequence(digits: Sequence[int], commas: bool = False) -> str:
  return (", " if commas else "").join(str(int(d)) for d in digits)


def _qa(question: str, body: str, answer: str | None = None) -> str:
  """One question with its `Answer:` line (and the answer, for worked examples)."""
  return f"{question} {body}\nAnswer:" + (f" {answer}" if answer is not None else "")


def copying_digits(style: str, n: int, rng: np.random.Generator) -> list[int]:
  """The n digits of one copying question of `style` (the answer is the last one)."""
  if style == "interleaved":
    return [1 - i % 2 for i in range(n - 1)] + [int(rng.integers(2, 10))]
  last = int(rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 9]))
  return [1] * (n - 1) + [last]


def copying_prompt(style: str, digits: Sequence[int], shots: Sequence[Sequence[int]] = ()) -> str:
  """The prompt text of a copying question (see the module doc); `shots` are few-shot sequences."""
  if style not in COPY_STYLES:
    raise ValueError(f"copying prompt style {style!r} is unknown; use one of {COPY_STYLES}.")
  body = _sequence(digits, commas=style == "commas")
  if style == "hint":
    return f"{COPY_QUESTION} {HINT} {body}\nAnswer:"
  if style == "cot":
    return f"{COPY_QUESTION} {body}\n{COT}"
  if style == "few_shot":
    worked = [_qa(COPY_QUESTION, _sequence(s), str(int(s[-1]))) for s in shots]
    return "\n\n".join([*worked, _qa(COPY_QUESTION, body)])
  return _qa(COPY_QUESTION, body)


def counting_items(style: str, n: int, rng: np.random.Generator) -> list[int]:
  """The n digits of one counting question of `style` (ones, or 0/1 digits for 'bits')."""
  if style == "bits":
    return [int(x) for x in rng.random(n) < P_ONE]
  return [1] * n


def counting_prompt(style: str, digits: Sequence[int], shots: Sequence[Sequence[int]] = ()) -> str:
  """The prompt text of a counting question (see the module doc)."""
  if style not in COUNT_STYLES:
    raise ValueError(f"counting prompt style {style!r} is unknown; use one of {COUNT_STYLES}.")
  if style == "sum":
    return f"What is {'+'.join(str(int(d)) for d in digits)}?\nAnswer:"
  body = _sequence(digits, commas=style == "commas")
  if style == "cot":
    return f"{COUNT_QUESTION} {body}\n{COT}"
  if style == "few_shot":
    worked = [_qa(COUNT_QUESTION, _sequence(s), str(sum(int(d) == 1 for d in s))) for s in shots]
    return "\n\n".join([*worked, _qa(COUNT_QUESTION, body)])
  return _qa(COUNT_QUESTION, body)


def few_shot_sequences(family: str, rng: np.random.Generator, k: int = FEW_SHOT) -> list[list[int]]:
  """k short worked-example sequences (5..8 digits): copying repeats a digit != 1 and ends in another
  digit, counting is all ones (so the examples do not give away the query's answer)."""
  out = []
  for _ in range(k):
    n = int(rng.integers(5, 9))
    if family == "copying":
      d, c = (int(x) for x in rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 9], size=2, replace=False))
      out.append([d] * (n - 1) + [c])
    else:
      out.append([1] * n)
  return out


def parse_answer(text: str, kind: str = "integer", style: str = "direct") -> int | None:
  """The answer in a model's output (None when there is none).

  kind 'digit': the first digit character; 'integer': the first integer. Style 'cot': the first number
  after the last "answer" in the output, else its last number.
  """
  if kind not in ("digit", "integer"):
    raise ValueError(f"parse kind {kind!r} is unknown; use 'digit' or 'integer'.")
  pattern = re.compile(r"\d") if kind == "digit" else _INT
  if style == "cot":
    marks = list(_ANSWER.finditer(text))
    if marks:
      found = pattern.search(text, marks[-1].end())
      if found:
        return int(found.group())
    found_all = pattern.findall(text)
    return int(found_all[-1]) if found_all else None
  found = pattern.search(text)
  return int(found.group()) if found else None


def parse_stats(predicted: Sequence[int | None], truth: Sequence[int]) -> dict[str, float | int | None]:
  """Accuracy (unparsed = wrong), parse rate, and the mean absolute error over parsed answers only
  (None when nothing parsed)."""
  if len(predicted) != len(truth):
    raise ValueError(f"{len(predicted)} predictions for {len(truth)} answers.")
  parsed = [(p, t) for p, t in zip(predicted, truth) if p is not None]
  n = max(len(truth), 1)
  return {
    "accuracy": sum(p == t for p, t in parsed) / n,
    "parse_rate": len(parsed) / n,
    "abs_error": float(np.mean([abs(p - t) for p, t in parsed])) if parsed else None,
    "parsed": len(parsed),
    "total": len(truth),
  }


def histogram(values: Iterable[int | None]) -> dict[str, int]:
  """{predicted value: count} of the parsed values (sorted by value), plus 'unparsed'."""
  vals = list(values)
  counts: dict[int, int] = {}
  for v in vals:
    if v is not None:
      counts[int(v)] = counts.get(int(v), 0) + 1
  out = {str(k): counts[k] for k in sorted(counts)}
  out["unparsed"] = sum(v is None for v in vals)
  return out


def probe_sentences(num: int, seed: int = 0, per_paragraph: int = 6) -> list[str]:
  """`num` short English paragraphs built from templates, in which is / are / was / were occur often
  (the default text of the entropy and separability probes of a pretrained model)."""
  rng = np.random.default_rng([seed, 7])
  nouns = ("cat", "dog", "house", "river", "teacher", "tree", "car", "city", "bird", "child", "book")
  plural = {"child": "children", "city": "cities"}
  adjs = ("small", "old", "quiet", "green", "happy", "far away", "very tall", "near the road", "new")
  out = []
  for _ in range(num):
    parts = []
    for _ in range(per_paragraph):
      noun = nouns[int(rng.integers(len(nouns)))]
      many, past = bool(rng.integers(2)), bool(rng.integers(2))
      subject = plural.get(noun, noun + "s") if many else noun
      verb = ("were" if past else "are") if many else ("was" if past else "is")
      parts.append(f"The {subject} {verb} {adjs[int(rng.integers(len(adjs)))]}.")
    out.append(" ".join(parts))
  return out
