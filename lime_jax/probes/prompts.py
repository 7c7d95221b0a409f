"""Natural-language prompts of the copying / counting probes for tokenizer-backed (pretrained) models,
the answer parser, and the parse-rate / histogram statistics (Glasses §3; docs/methods.md §5).

A model with its own subword tokenizer (`evaluate --hf=PATH`, or a run fine-tuned with an HF
tokenizer) is asked in words, as the paper asks Gemma; the synthetic `last:111=` format of the char
tokenizer stays for models trained on the synthetic tasks.

Copying (`COPY_STYLES`): the sequence is n-1 ones then a final digit c != 1 (the paper's 1...10 with c
uniform in {0, 2..9}), asked as
  direct       What is the last digit of the following sequence? 1110\nAnswer:
  hint         the same question followed by the paper's hint "It's not necessarily a 1, check carefully."
  cot          ... Let's think step by step.   (parsed after the last "answer" / "=", else the last number)
  few_shot     `FEW_SHOT` worked examples (shorter sequences, other digits) before the question
  commas       the sequence written with ", " between the digits (1, 1, 1, 0)
  interleaved  n-1 alternating digits 1, 0, 1, ... then c in {2..9} (the pattern is not 1 or 0)
Counting (`COUNT_STYLES`): how many ones in n ones (direct, cot, few_shot, commas), `sum` = "What is
1+1+...+1?", `bits` = how many ones in n digits that are 1 with probability 0.7 (the paper's p), and
`word` = how many times "dog" appears in n words drawn uniformly from 8 (the paper's word counting).
The hint is a copying prompt only ("not necessarily a 1" has no counting counterpart).

Parsing (`parse_answer`, given the question's sequence): copying takes the first digit that stands alone,
counting the first plausible count, one that counts ones ("there are 4 ones") first; cot takes the
first one after the last "answer" or "=", else the last one. Nothing inside an echo of the question
counts (`is_echo`: the sequence, or a start of it, written out as 1111..., 1, 1, ... or 1+1+...; real
models repeat the question, and 1111...1 used to parse as a count of 10^40), nor a number glued to a
word ("a sequence of 1s"), and a count is at most max(100, 10 n) (`plausible_count`). An output
without an answer is *unparsed*: it is left out of the error and counted in `parse_rate` (an unparsed
count used to score as a prediction of 0). `parse_stats` reports the median and the mean absolute error
over the parsed answers (exact integers, capped at `ERROR_CAP`).

With the chat template (`--chat_template`) a question is one user message and the answer gets more
tokens (`max_new_tokens`: 24, cot 96; plain text 6, cot 48).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence

import numpy as np

COPY_STYLES = ("direct", "hint", "cot", "few_shot", "commas", "interleaved")
COUNT_STYLES = ("direct", "cot", "few_shot", "commas", "sum", "bits", "word")
COUNT_WORDS = ("cat", "dog", "sun", "map", "red", "box", "pen", "cup")  # 'word': n of these, uniformly
WORD_TARGET = 1  # 'word' counts COUNT_WORDS[1] ("dog"): an item equal to 1 is counted, as in the digit styles
HINT = "It's not necessarily a 1, check carefully."
COT = "Let's think step by step."
COPY_QUESTION = "What is the last digit of the following sequence?"
COUNT_QUESTION = "How many ones are there in the following sequence?"
FEW_SHOT = 3  # worked examples of the few-shot style.
MAX_NEW = {"cot": 48}  # greedy tokens decoded per style (others: `DEFAULT_MAX_NEW`).
DEFAULT_MAX_NEW = 6
# With the chat template an answer is a sentence ("The last digit of the sequence is 0."): more tokens.
CHAT_MAX_NEW = {"cot": 96}
CHAT_DEFAULT_MAX_NEW = 24
P_ONE = 0.7  # 'bits': probability of a 1 (the paper's counting setting).
ERROR_CAP = 10**15  # absolute errors are capped here (exact in float64) before the mean.
_INT = re.compile(r"-?\d+")
_DIGIT = re.compile(r"\d")
_SPAN = re.compile(r"\d+(?:[ \t]*[,+][ \t]*\d+)*(?:[ \t]*[,+])?")  # numbers joined by ',' / '+'
_MARK = re.compile(r"answer|=", re.IGNORECASE)  # cot: the final answer follows the last of these.
_LIST_MARKER = re.compile(r"(?:^|\n)[ \t]*(\d+)[.)][ \t]+[A-Za-z]")  # "1. The first digit ..." numbers a step
_ONES = re.compile(r"[ \t]+ones?\b", re.IGNORECASE)  # after a count: "there are 4 ones"


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
  """The n items of one counting question of `style`: ones, 0/1 digits for 'bits' (P(1) = P_ONE), indices
  into COUNT_WORDS for 'word'. The answer is the number of items equal to 1 (`count_answer`)."""
  if style == "bits":
    return [int(x) for x in rng.random(n) < P_ONE]
  if style == "word":
    return [int(i) for i in rng.integers(0, len(COUNT_WORDS), size=n)]
  return [1] * n


def count_answer(items: Sequence[int]) -> int:
  """The true answer of a counting question: its items equal to 1 (ones, or the target word's index)."""
  return sum(int(x) == 1 for x in items)


def counted_mask(style: str, items: Sequence[int]) -> list[int]:
  """The question as 0/1 digits for `parse_answer` (what is counted is 1): the items themselves for the
  digit styles, for 'word' whether each word is the target."""
  return [int(int(x) == WORD_TARGET) for x in items] if style == "word" else [int(x) for x in items]


def counting_prompt(style: str, digits: Sequence[int], shots: Sequence[Sequence[int]] = ()) -> str:
  """The prompt text of a counting question (see the module doc)."""
  if style not in COUNT_STYLES:
    raise ValueError(f"counting prompt style {style!r} is unknown; use one of {COUNT_STYLES}.")
  if style == "sum":
    return f"What is {'+'.join(str(int(d)) for d in digits)}?\nAnswer:"
  if style == "word":
    words = " ".join(COUNT_WORDS[int(i)] for i in digits)
    return _qa(
      f'How many times does the word "{COUNT_WORDS[WORD_TARGET]}" appear in the following text?', words
    )
  body = _sequence(digits, commas=style == "commas")
  if style == "cot":
    return f"{COUNT_QUESTION} {body}\n{COT}"
  if style == "few_shot":
    worked = [_qa(COUNT_QUESTION, _sequence(s), str(sum(int(d) == 1 for d in s))) for s in shots]
    return "\n\n".join([*worked, _qa(COUNT_QUESTION, body)])
  return _qa(COUNT_QUESTION, body)


def max_new_tokens(style: str, chat_template: bool = False) -> int:
  """Greedy tokens decoded for an answer of `style` (plain text or chat template)."""
  if chat_template:
    return CHAT_MAX_NEW.get(style, CHAT_DEFAULT_MAX_NEW)
  return MAX_NEW.get(style, DEFAULT_MAX_NEW)


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


def _written_forms(sequence: Sequence[int]) -> tuple[str, ...]:
  """The ways the prompts write a sequence, without spaces: 1110, 1,1,1,0 and 1+1+1+0."""
  digits = [str(int(d)) for d in sequence]
  return ("".join(digits), ",".join(digits), "+".join(digits))


def is_echo(span: str, sequence: Sequence[int]) -> bool:
  """Whether `span` (digits, possibly joined by ',' / '+', as `_SPAN` finds them) repeats the question's
  sequence instead of answering it: with a separator, a start of one of its `_written_forms` ('1, 1, '
  or '1+1+' of an all-ones question); a bare number, for n >= 2, a start of its digits with at least
  min(4, n) digits (1111 at n = 64, 11 at n = 2; 111 at n = 64 stays a count, 1 at n = 1 the answer)."""
  norm = re.sub(r"\s", "", span)
  forms = _written_forms(sequence)
  if "," in norm or "+" in norm:
    return any(form.startswith(norm) for form in forms[1:])
  n = len(sequence)
  return n >= 2 and len(norm) >= min(4, n) and forms[0].startswith(norm)


def plausible_count(number: str, sequence: Sequence[int]) -> bool:
  """Whether a number can be a count of the n digits of `sequence`: at most `max(100, 10 n)` in absolute
  value (a longer digit string is the sequence, or a piece of it, written out) and not `is_echo`."""
  return abs(int(number)) <= max(100, 10 * len(sequence)) and not is_echo(number.lstrip("-"), sequence)


def _answers(text: str, kind: str, sequence: Sequence[int] | None) -> list[re.Match]:
  """The matches in `text` that can be the answer, in order (see `parse_answer`)."""
  if sequence is None:
    return list((_DIGIT if kind == "digit" else _INT).finditer(text))
  echoes = [m.span() for m in _SPAN.finditer(text) if is_echo(m.group(), sequence)]
  markers = {m.start(1) for m in _LIST_MARKER.finditer(text)}
  found = [
    m
    for m in _INT.finditer(text)
    if not any(a <= m.end() - 1 < b for a, b in echoes)
    and not text[m.end() : m.end() + 1].isalpha()
    and m.start() not in markers
  ]
  if kind == "digit":
    return [m for m in found if len(m.group()) == 1]
  return [m for m in found if plausible_count(m.group(), sequence)]


def parse_answer(
  text: str,
  kind: str = "integer",
  style: str = "direct",
  sequence: Sequence[int] | None = None,
  truncated: bool = False,
) -> int | None:
  """The answer in a model's output (None when there is none).

  kind 'digit': the first digit character; 'integer': the first integer. Given the question's
  `sequence`, only what can be an answer counts: nothing inside an echo of the sequence (`is_echo`), no
  number glued to a word ('1s', '2nd') or numbering a list item at a line's start ('1. The first
  digit ...'), for 'digit' a digit standing alone (the 1 of '11' answers no
  "last digit" question), for 'integer' a `plausible_count`, and a number that counts ones ('4 ones')
  goes before the others. Style 'cot': the first such number after the last "answer" or "=" that has
  one after it (unless a count of ones is stated later: the last of those), else the last one (the last
  that counts ones first). `truncated`: the output was cut at
  the token budget, so a number touching its end may be the start of a longer one ('... * 1' of '... *
  111') and is no answer.
  """
  if kind not in ("digit", "integer"):
    raise ValueError(f"parse kind {kind!r} is unknown; use 'digit' or 'integer'.")
  found = _answers(text, kind, sequence)
  if truncated:
    found = [m for m in found if m.end() < len(text)]
  if not found:
    return None
  counted = [m for m in found if sequence is not None and kind == "integer" and _ONES.match(text, m.end())]
  if style == "cot":
    for mark in reversed(list(_MARK.finditer(text))):
      after = next((m for m in found if m.start() >= mark.end()), None)
      if after is not None:
        stated_later = [m for m in counted if m.start() > after.start()]  # "= 51. ... there are 5 ones."
        return int((stated_later[-1] if stated_later else after).group())
  pick = counted or found
  return int((pick[-1] if style == "cot" else pick[0]).group())


def parse_stats(predicted: Sequence[int | None], truth: Sequence[int]) -> dict[str, float | int | None]:
  """Accuracy (unparsed = wrong), parse rate, and the median and mean absolute error over the parsed
  answers only (None when nothing parsed). Errors are exact integers, each capped at `ERROR_CAP` before
  the mean (a runaway digit string must not overflow the statistics)."""
  if len(predicted) != len(truth):
    raise ValueError(f"{len(predicted)} predictions for {len(truth)} answers.")
  parsed = [(int(p), int(t)) for p, t in zip(predicted, truth) if p is not None]
  errors = sorted(min(abs(p - t), ERROR_CAP) for p, t in parsed)
  n = max(len(truth), 1)
  return {
    "accuracy": sum(p == t for p, t in parsed) / n,
    "parse_rate": len(parsed) / n,
    "abs_error": sum(errors) / len(errors) if errors else None,
    "median_abs_error": float(statistics.median(errors)) if errors else None,
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
