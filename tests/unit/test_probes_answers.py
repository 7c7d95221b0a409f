"""Answer parsing on real models' outputs (echoes of the question, chain of thought, chat sentences), the
robust counting statistics, and the chat-template prompt format of the copying / counting probes."""

from __future__ import annotations

import types

import pytest

from lime_jax.probes import copying, counting, nl_tasks, prompts
from lime_jax.probes.registry import ProbeContext, ProbeOptions

ONES4, ONES16, ONES64 = [1] * 4, [1] * 16, [1] * 64
COPY4 = [1, 1, 1, 0]


@pytest.mark.parametrize(
  "text, style, sequence, want",
  [
    # SmolLM2-135M-Instruct's own outputs (greedy, lime_jax and transformers alike):
    (" 1111", "direct", ONES4, None),  # the question repeated: no count
    ("\n\nThe number of ones in the sequence is 1111.\n\nThe answer is 1111.", "cot", ONES4, None),
    (
      "\n\nThe number of ones in the given sequence is 1111111111111111.\n\nThe number of ones in the "
      "original sequence is 1.\n\nThe number of",
      "cot",
      ONES16,
      1,
    ),
    ("\n\n" + "1" * 46, "cot", ONES64, None),  # used to parse as 111...1 (mean abs error 1.1e41)
    ("1111 is a", "direct", ONES4, None),
    ("The sequence 1, ", "commas", ONES4, None),
    ("1+1+1+", "sum", ONES4, None),
    (" 1011", "bits", [1, 0, 1, 1], None),
    (" 1", "few_shot", ONES16, 1),  # a (wrong) count
    ("1111 is a sequence of 1s, where each number is the sum of the previous one", "direct", ONES4, None),
    (
      "To find the number of ones in the given sequence, we can use the concept of binary representation. "
      "In binary, each digit can be either 1 or 0. In the sequence 1111, there are 11 ones.\n\nIn binary, "
      "each digit can be either 1 or 0, so the number of ones is determined by the number",
      "cot",
      ONES4,
      11,  # the count the model states, not the 0 of "1 or 0" written after it
    ),
    ("1110100001001110 = 111010", "bits", [int(c) for c in "1110100001001110"], None),
    (  # SmolLM2 in bf16 through its chat template: the count stated after the arithmetic is the answer
      "To find the number of ones in the given sequence, we can use a bit of creative thinking. We can start "
      "by dividing the number 11111111 by 2, which gives us 5. Now, we can multiply this result by 11 to get "
      "the number of ones.\n\nSo, 5 * 11 = 51. This means that there are 5 ones in the given sequence.",
      "cot",
      [1] * 8,
      5,
    ),
    # answers as instruction-tuned models write them:
    (" 4", "direct", ONES4, 4),
    ("There are 4 ones in the sequence 1111.", "direct", ONES4, 4),
    ("Let's count them: 1, 2, 3, 4. The answer is 4.", "cot", ONES4, 4),
    ("1+1 = 2, 2+1 = 3, 3+1 = 4", "cot", ONES4, 4),
    ("1 + 1 + 1 + 1 = 4", "sum", ONES4, 4),
    ("The sequence 1, 1, 1, 1 has 4 ones.", "commas", ONES4, 4),
    ("Step 1: look at each digit. There are 4 ones.", "direct", ONES4, 4),
    ("It is the 1st digit; 1 one.", "direct", [1], 1),
    ("Counting the ones in 1111111111111111: there are 16.\nAnswer: **16**", "cot", ONES16, 16),
    ("The answer is 64. Check: 1+1", "cot", ONES64, 64),  # no number after the last '+': 'answer'
    (" 62", "direct", ONES64, 62),
    (" 111", "direct", ONES64, 111),  # three digits may be a count at n = 64
    (" 100", "direct", ONES4, 100),  # a wrong count, kept (<= max(100, 10 n))
    (" 101", "direct", ONES4, None),  # more than any count of 4 digits
    (" 2", "direct", [1], 2),
    (" 1", "direct", [1], 1),  # n = 1: the sequence and the answer coincide
  ],
)
def test_count_answers_of_real_models(text, style, sequence, want):
  assert prompts.parse_answer(text, "integer", style, sequence) == want


@pytest.mark.parametrize(
  "text, style, sequence, want",
  [
    # Gemma 3 270M (base), chain of thought at n = 512: a numbered step, not an answer
    ("\n\n1. The first digit of the number is 11111111111111111111111111111", "cot", [1] * 511 + [4], None),
    ("Steps:\n1) Look at the end.\n2) The last digit is 4.", "cot", [1] * 7 + [4], 4),
    (" 1110", "hint", COPY4, None),  # SmolLM2: the sequence repeated
    ("The last digit of the given sequence is 11.", "direct", COPY4, None),  # SmolLM2 with its chat template
    (" 11\n\nWhat", "few_shot", [1] * 15 + [0], None),
    (
      "\n\nThe last digit of the sequence is 1111111111111113.\n\nThe last digit",
      "cot",
      [1] * 15 + [3],
      None,
    ),
    (" 5", "commas", COPY4, 5),
    (" 0", "direct", COPY4, 0),
    ("The last digit of the sequence is 0.", "direct", COPY4, 0),
    (" 1, 1, 1, 0", "commas", COPY4, None),
    ("The digits are all 1 except the last. The answer is 0.", "cot", COPY4, 0),
  ],
)
def test_digit_answers_of_real_models(text, style, sequence, want):
  assert prompts.parse_answer(text, "digit", style, sequence) == want


def test_a_number_cut_at_the_token_budget_is_no_answer():
  cot = " 1113 is 111 * 111 * 111 * 1"  # SmolLM2 at 48 tokens: the last 1 would have gone on
  assert prompts.parse_answer(cot, "digit", "cot", [1, 1, 1, 3], truncated=True) is None
  assert prompts.parse_answer(cot, "digit", "cot", [1, 1, 1, 3]) == 1
  assert prompts.parse_answer("There are 4 ones. So 4", "integer", "cot", ONES4, truncated=True) == 4
  assert prompts.parse_answer(" 4.", "integer", "direct", ONES4, truncated=True) == 4


def test_echo_and_plausibility_rules():
  assert (
    prompts.is_echo("1, 1,", ONES4) and prompts.is_echo("1+1+1+1", ONES4) and not prompts.is_echo("4,", ONES4)
  )
  assert (
    prompts.is_echo("11", [1, 1]) and not prompts.is_echo("11", ONES16) and prompts.is_echo("1111", ONES64)
  )
  assert prompts.plausible_count("640", ONES64) and not prompts.plausible_count("641", ONES64)
  assert not prompts.plausible_count("1" * 300, ONES64)  # no float conversion, no overflow


def test_stats_are_robust_and_never_overflow():
  stats = prompts.parse_stats([10**46, None, 60, 70], [64, 64, 64, 64])
  assert stats["parse_rate"] == 0.75 and stats["parsed"] == 3 and stats["accuracy"] == 0.0
  assert stats["median_abs_error"] == 6.0  # |60-64|, |70-64|, capped 10^46: the median ignores the outlier
  assert stats["abs_error"] == pytest.approx((prompts.ERROR_CAP + 4 + 6) / 3)
  assert prompts.parse_stats([None, None], [1, 2])["median_abs_error"] is None
  assert prompts.parse_stats([3, 5], [4, 4])["median_abs_error"] == 1.0


class _ChatTok:
  """A subword tokenizer stand-in with a chat template (nl_tasks only renders with it here)."""

  chat_template = "{{ messages }}"
  path = "fake"

  def apply_chat_template(self, messages, add_generation_prompt=True):
    return f"<user>{messages[0]['content']}</user><assistant>"


def _ctx(tokenizer, chat: bool):
  progress = types.SimpleNamespace(start=lambda *a: None, advance=lambda *a: None)
  return ProbeContext(
    tokenizer=tokenizer,
    options=ProbeOptions(lengths=(4, 8), num_examples=2, chat_template=chat),
    model_cfg=None,
    params=None,
    progress=progress,
    config=None,
  )


def test_chat_template_flag_wraps_questions_and_is_reported(monkeypatch):
  calls = []

  def fake_generate(params, cfg, tokenizer, texts, max_new, chat_template=False):
    calls.append((max_new, chat_template))
    return [nl_tasks.Continuation(" There are 4 ones.", True) for _ in texts]

  monkeypatch.setattr(nl_tasks, "continuations", fake_generate)
  monkeypatch.setattr(nl_tasks.common, "probe_model_cfg", lambda cfg: cfg)
  result = counting.run(_ctx(_ChatTok(), chat=True))
  m = result["metrics"]
  assert m["chat_template"] is True and all(chat for _, chat in calls)
  assert {n for n, _ in calls} == {prompts.CHAT_DEFAULT_MAX_NEW, prompts.CHAT_MAX_NEW["cot"]}
  sample = m["samples"]["direct"][0]
  assert sample["rendered_prompt"] == f"<user>{sample['prompt']}</user><assistant>"
  assert [s["n"] for s in m["samples"]["cot"]] == [4, 8]  # every length's first output is kept
  assert m["median_abs_error"]["direct"] == [0.0, 4.0] and m["abs_error"]["direct"] == [0.0, 4.0]
  rows = dict(result["summary"])
  assert rows["counting prompts"] == "chat template (--chat_template)"
  assert rows["counting direct abs err @ n=8"] == "median 4 · mean 4 · parsed 1/1"
  copy = copying.run(_ctx(_ChatTok(), chat=True))
  assert copy["metrics"]["chat_template"] is True and dict(copy["summary"])["copying prompts"].startswith(
    "chat"
  )


def test_chat_template_flag_without_a_template_names_the_flag(monkeypatch):
  monkeypatch.setattr(nl_tasks.common, "probe_model_cfg", lambda cfg: cfg)
  with pytest.raises(ValueError, match="--chat_template: the tokenizer 'plain' has no chat template"):
    counting.run(_ctx(types.SimpleNamespace(path="plain", chat_template=None), chat=True))
