"""Natural-language copying / counting prompts, the answer parser, parse rate and histogram."""

from __future__ import annotations

import types

import numpy as np
import pytest

from lime_jax.data.copying import glasses_tokenizer
from lime_jax.probes import counting, nl_tasks, prompts
from lime_jax.probes.registry import ProbeContext, ProbeOptions


def test_copying_templates_are_literal():
  seq = [1, 1, 1, 0]
  assert prompts.copying_prompt("direct", seq) == (
    "What is the last digit of the following sequence? 1110\nAnswer:"
  )
  assert prompts.copying_prompt("hint", seq) == (
    "What is the last digit of the following sequence? It's not necessarily a 1, check carefully. "
    "1110\nAnswer:"
  )
  assert prompts.copying_prompt("cot", seq) == (
    "What is the last digit of the following sequence? 1110\nLet's think step by step."
  )
  assert prompts.copying_prompt("commas", seq) == (
    "What is the last digit of the following sequence? 1, 1, 1, 0\nAnswer:"
  )
  assert prompts.copying_prompt("few_shot", seq, shots=[[2, 2, 5], [3, 7]]) == (
    "What is the last digit of the following sequence? 225\nAnswer: 5\n\n"
    "What is the last digit of the following sequence? 37\nAnswer: 7\n\n"
    "What is the last digit of the following sequence? 1110\nAnswer:"
  )
  with pytest.raises(ValueError, match="copying prompt style 'bogus'"):
    prompts.copying_prompt("bogus", seq)


def test_counting_templates_are_literal():
  assert prompts.counting_prompt("direct", [1, 1, 1]) == (
    "How many ones are there in the following sequence? 111\nAnswer:"
  )
  assert prompts.counting_prompt("commas", [1, 1]) == (
    "How many ones are there in the following sequence? 1, 1\nAnswer:"
  )
  assert prompts.counting_prompt("sum", [1, 1, 1]) == "What is 1+1+1?\nAnswer:"
  assert prompts.counting_prompt("cot", [1, 1]) == (
    "How many ones are there in the following sequence? 11\nLet's think step by step."
  )
  assert prompts.counting_prompt("few_shot", [1, 1], shots=[[1, 1, 1]]) == (
    "How many ones are there in the following sequence? 111\nAnswer: 3\n\n"
    "How many ones are there in the following sequence? 11\nAnswer:"
  )
  assert prompts.counting_prompt("bits", [1, 0, 1]) == (
    "How many ones are there in the following sequence? 101\nAnswer:"
  )


def test_sequences_of_each_style():
  rng = np.random.default_rng(0)
  for _ in range(20):
    seq = prompts.copying_digits("direct", 6, rng)
    assert seq[:5] == [1] * 5 and seq[5] != 1 and len(seq) == 6
    inter = prompts.copying_digits("interleaved", 6, rng)
    assert inter[:5] == [1, 0, 1, 0, 1] and 2 <= inter[5] <= 9
  bits = np.array([prompts.counting_items("bits", 1000, rng)])
  assert set(np.unique(bits)) <= {0, 1} and 0.65 < bits.mean() < 0.75
  for shot in prompts.few_shot_sequences("copying", rng):
    assert 5 <= len(shot) <= 8 and 1 not in shot and shot[-1] != shot[0]


@pytest.mark.parametrize(
  "text, kind, style, want",
  [
    (" 7\n\nWhat is", "digit", "direct", 7),
    (" 42 or 43", "integer", "direct", 42),
    (" 42", "digit", "direct", 4),
    ("the answer: -3", "integer", "direct", -3),
    ("  \n", "integer", "direct", None),
    (" The sequence has 10 digits. The answer is 0.", "digit", "cot", 0),
    (" 5 ones, 2 zeros, so 5 + 2 = 7", "integer", "cot", 7),  # no "answer": the last number
    (" answer: none; Answer is 12", "integer", "cot", 12),
    (" I don't know", "integer", "cot", None),
  ],
)
def test_parse_answer(text, kind, style, want):
  assert prompts.parse_answer(text, kind, style) == want


def test_parse_stats_excludes_unparsed():
  stats = prompts.parse_stats([3, None, 10, None], [3, 5, 8, 1])
  assert stats["parse_rate"] == 0.5 and stats["accuracy"] == 0.25
  assert stats["abs_error"] == 1.0  # (|3-3| + |10-8|) / 2; the unparsed ones are not scored as 0
  assert prompts.parse_stats([None], [4])["abs_error"] is None
  assert prompts.histogram([100, None, 7, 100]) == {"7": 1, "100": 2, "unparsed": 1}


class _WordTok:
  """Stands in for a subword tokenizer: nl_tasks only needs it to not be the char / byte one."""


def _ctx(tokenizer, lengths=(4, 8), num_examples=3):
  progress = types.SimpleNamespace(start=lambda *a: None, advance=lambda *a: None)
  return ProbeContext(
    tokenizer=tokenizer,
    options=ProbeOptions(lengths=lengths, num_examples=num_examples),
    model_cfg=None,
    params=None,
    progress=progress,
    config=None,
  )


def test_counting_histogram_and_parse_rate_from_fake_decoder(monkeypatch):
  """A decoder that answers '100' half the time and babbles otherwise: the histogram collapses onto 100,
  the parse rate is the share of numbers, and the error counts only the parsed answers."""
  calls = []

  def fake_generate(params, cfg, tokenizer, texts, max_new, chat_template=False):
    calls.append((list(texts), max_new))
    return [nl_tasks.Continuation(" 100" if i % 2 == 0 else " hmm", True) for i in range(len(texts))]

  monkeypatch.setattr(nl_tasks, "continuations", fake_generate)
  monkeypatch.setattr(nl_tasks.common, "probe_model_cfg", lambda cfg: cfg)
  result = counting.run(_ctx(_WordTok()))
  m = result["metrics"]
  assert m["prompt_format"] == "natural_language" and m["lengths"] == [4, 8]
  assert set(m["abs_error"]) == set(prompts.COUNT_STYLES)
  # one question per length for the all-ones styles (parsed: error |100 - n|), 3 for 'bits' and 'word'
  assert m["abs_error"]["direct"] == [96.0, 92.0] and m["parse_rate"]["direct"] == [1.0, 1.0]
  assert m["parse_rate"]["bits"] == [pytest.approx(2 / 3)] * 2 == m["parse_rate"]["word"]
  n_total = 5 * 2 + 2 * 3 * 2
  assert m["histogram"]["100"] == 5 * 2 + 2 * 2 * 2 and m["histogram"]["unparsed"] == 2 * 2
  assert m["parse_rate_overall"] == pytest.approx(18 / n_total)
  assert {max_new for _, max_new in calls} == {prompts.DEFAULT_MAX_NEW, prompts.MAX_NEW["cot"]}
  assert calls[0][0][0] == "How many ones are there in the following sequence? 1111\nAnswer:"
  hist = [p for p in result["plots"] if p.get("kind") == "hist"][0]
  assert sorted(set(hist["values"])) == [100]


def test_trained_counting_path_reports_parse_rate(monkeypatch):
  """The char-tokenizer path: unparsed answers are left out of the error and counted in the parse rate
  (they used to score as predicting 0)."""
  monkeypatch.setattr(
    counting,
    "answer_accuracy",
    lambda ctx, cfg, examples: (0.0, ["x" if i % 2 else e.answer for i, e in enumerate(examples)]),
  )
  monkeypatch.setattr(counting, "start_length_sweep", lambda ctx, family, variants: (None, [4, 8]))
  ctx = _ctx(glasses_tokenizer(), num_examples=4)
  ctx.config = types.SimpleNamespace(
    seed=0, data=types.SimpleNamespace(task="copying", counting=types.SimpleNamespace(p_one=0.7))
  )
  m = counting.run(ctx)["metrics"]
  assert m["abs_error"]["sum"] == [0.0, 0.0] and m["parse_rate"]["sum"] == [1.0, 1.0]
  assert m["parse_rate"]["bits"] == [0.5, 0.5] and m["abs_error"]["bits"] == [0.0, 0.0]
  assert m["histogram"]["unparsed"] == 2 * 2 * 2


def test_word_counting_question_answer_and_parse():
  """'word' (the paper's word counting): n words drawn from COUNT_WORDS, the answer is how often "dog"
  appears in the prompt's text, and a count is parsed against the question's 0/1 mask."""
  rng = np.random.default_rng(3)
  items = prompts.counting_items("word", 40, rng)
  assert len(items) == 40 and set(items) <= set(range(len(prompts.COUNT_WORDS))) and len(set(items)) > 3
  text = prompts.counting_prompt("word", items)
  assert text.startswith('How many times does the word "dog" appear in the following text? ')
  words = text.split("? ", 1)[1].removesuffix("\nAnswer:").split(" ")
  assert len(words) == 40 and prompts.count_answer(items) == words.count("dog") > 0
  mask = prompts.counted_mask("word", items)
  assert sum(mask) == words.count("dog")
  assert prompts.parse_answer(f" {words.count('dog')}\n", "integer", "word", mask) == words.count("dog")
  assert prompts.parse_answer(" dog dog dog", "integer", "word", mask) is None
