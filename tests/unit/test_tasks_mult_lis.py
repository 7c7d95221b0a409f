"""Tests of the multiplication (Deng et al. format) and LIS (Feng et al.) tasks and their pipeline use."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lime_jax.config import default_config, validate
from lime_jax.data import base, pipeline, tasks
from lime_jax.data.lis import LisTask, NumberTokenizer, lis_ending_at
from lime_jax.data.multiplication import (
  MultiplicationTask,
  format_example,
  format_line,
  official_test_file,
  parse_operands,
  read_eval_file,
)

DATA = official_test_file(4).parent  # the packaged copy of ../shared/data/multiplication/
OFFICIAL = {n: DATA / f"{n}x{n}_test.txt" for n in (4, 5)}
# sha256 of the official files as distributed (../shared/data/multiplication/): the packaged copies
# must be those bytes, so every test below checks against the real files.
OFFICIAL_SHA256 = {
  4: "7aeb64139bc14b869e72016d8873ae68c1114093b7b78ba4e33966beb699d786",
  5: "b4ea09fc6c925ab3ca46f1e56f0c1bbf858264ef1b0589564b220c7c015fa665",
}


# ------------------------------------------------------------------------------- multiplication


@pytest.mark.parametrize("n", [4, 5])
def test_formatter_reproduces_every_official_line(n):
  raw = OFFICIAL[n].read_bytes()
  assert hashlib.sha256(raw).hexdigest() == OFFICIAL_SHA256[n]
  lines = raw.decode("ascii").split("\n")
  assert lines[-1] == "" and len(lines) == 1001  # 1000 lines, newline-terminated.
  rebuilt = [format_line(*parse_operands(line), n, cot=True) for line in lines[:-1]]
  assert ("\n".join(rebuilt) + "\n").encode("ascii") == raw
  for line in lines[:-1]:  # operands have exactly n digits (most-significant digit non-zero).
    a, b = parse_operands(line)
    assert 10 ** (n - 1) <= a < 10**n and 10 ** (n - 1) <= b < 10**n


def test_format_small_cases_by_hand():
  # 123 * 456: partial products 738, 6150, 49200; running sum 6888 after the 2nd; C = 056088.
  assert format_line(123, 456, 3, cot=True) == (
    "3 2 1 * 6 5 4||8 3 7 0 + 0 5 1 6 0 ( 8 8 8 6 0 ) + 0 0 2 9 4 0 #### 8 8 0 6 5 0"
  )
  # No CoT: the official target keeps the marker (`'####' + C`); the bare product is an option.
  assert format_line(123, 456, 3, cot=False) == "3 2 1 * 6 5 4||#### 8 8 0 6 5 0"
  assert format_line(123, 456, 3, cot=False, marker=False) == "3 2 1 * 6 5 4||8 8 0 6 5 0"
  assert format_line(123, 456, 3, cot=True, marker=False) == format_line(123, 456, 3, cot=True)
  assert format_line(12, 34, 2, cot=True) == "2 1 * 4 3||8 4 0 + 0 6 3 0 #### 8 0 4 0"
  with pytest.raises(ValueError, match="exactly n=3 digits"):
    format_line(12, 456, 3, cot=True)


@pytest.mark.parametrize("marker", [True, False])
def test_multiplication_config_selects_the_no_cot_marker(marker):
  """config.data.multiplication.answer_marker (default True, the official no-CoT target) reaches the
  task built from the config."""
  config = default_config()
  config.data.task = "multiplication"
  config.data.multiplication.num_digits = 3
  if not marker:
    config.data.multiplication.answer_marker = False
  ex = tasks.get_task(config.data, seed=0).example("train", 0)
  assert ex.answer.startswith("#### ") == marker
  assert len(ex.answer.split()) == 6 + (1 if marker else 0)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("cot", [False, True])
def test_multiplication_examples_are_correct_and_deterministic(n, cot):
  task = MultiplicationTask(n, cot=cot, seed=3)
  for split in base.SPLITS:
    for i in range(30):
      ex = task.example(split, i)
      assert ex == MultiplicationTask(n, cot=cot, seed=3).example(split, i)
      a, b = parse_operands(ex.question)
      assert 10 ** (n - 1) <= a < 10**n and 10 ** (n - 1) <= b < 10**n
      assert ex.question.endswith("||")
      assert ex.question + ex.answer == format_line(a, b, n, cot)
      product = ex.answer.split("####")[-1]
      assert int("".join(product.split())[::-1]) == a * b
      assert len(product.split()) == 2 * n
      tokens = task.tokenizer.encode(ex.text)
      assert len(tokens) == len(task.tokenizer.encode(task.longest_example().text))
  assert task.example("train", 0) != MultiplicationTask(n, cot=cot, seed=4).example("train", 0)


def test_multiplication_hash_splits_are_disjoint():
  task = MultiplicationTask(3, cot=False, seed=0, test_fraction=0.05)
  train = {task.example("train", i).question for i in range(1500)}
  test = {task.example("test", i).question for i in range(200)}
  assert not train & test
  assert all(base.in_test_region(q, 0.05) for q in test)


@pytest.mark.parametrize("n", [4, 5])
def test_official_eval_file_is_test_split_and_never_trained_on(n):
  template = str(DATA / "{n}x{n}_test.txt")
  task = MultiplicationTask(n, cot=True, seed=0, eval_file=template)
  lines = OFFICIAL[n].read_text().splitlines()
  assert [task.example("test", i).question + task.example("test", i).answer for i in range(5)] == lines[:5]
  assert task.example("test", 999).question + task.example("test", 999).answer == lines[999]
  with pytest.raises(ValueError, match="past the 1000 lines"):
    task.example("test", 1000)
  official = set(read_eval_file(str(OFFICIAL[n]), n))
  official |= {(b, a) for a, b in official}
  # Few draws would hit a test pair by chance (1000 of ~8e7 pairs for n=4), so also check the
  # exclusion directly: a task whose sampler is forced onto a test pair must redraw.
  for i in range(300):
    assert parse_operands(task.example("train", i).question) not in official
  outside = lambda pair: not base.in_test_region(format_example(*pair, n, cot=True).question, 0.01)
  trap = [pair for pair in sorted(official) if outside(pair)][:2]  # only the exclusion rejects them.
  fresh = next(
    p for p in ((10**n - 1 - k, 10**n - 1) for k in range(100)) if outside(p) and p not in official
  )
  draws = [*trap, fresh]
  forced = MultiplicationTask(n, cot=True, seed=0, eval_file=template)
  forced.draw_operands = lambda rng: draws.pop(0)
  assert parse_operands(forced.example("train", 0).question) == fresh and not draws


def test_official_keyword_names_the_packaged_files():
  task = MultiplicationTask(5, cot=True, eval_file="official")
  assert task.eval_file == str(OFFICIAL[5]) and len(task.eval_pairs) == 1000
  c = default_config()
  c.data.multiplication.update(num_digits=3, eval_file="official")
  with pytest.raises(ValueError, match="data.multiplication.eval_file"):
    validate(c)


def test_eval_file_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    MultiplicationTask(4, eval_file=str(tmp_path / "missing.txt"))
  bad = tmp_path / "bad.txt"
  bad.write_text(format_line(1234, 5678, 4, cot=True).replace("#### 2", "#### 3") + "\n")
  with pytest.raises(ValueError, match="differs"):
    MultiplicationTask(4, eval_file=str(bad))


# ------------------------------------------------------------------------------------------- LIS


def _lis_quadratic(values: list[int]) -> tuple[list[int], int]:
  """Independent O(n^2) DP: longest strictly increasing subsequence ending at each position."""
  best = [1] * len(values)
  for i in range(len(values)):
    for j in range(i):
      if values[j] < values[i] and best[j] + 1 > best[i]:
        best[i] = best[j] + 1
  return best, max(best)


@pytest.mark.parametrize("length", [50, 80, 100])
@pytest.mark.parametrize("cot", [False, True])
def test_lis_answers_match_quadratic_dp(length, cot):
  task = LisTask(length, cot=cot, seed=1)
  lo, hi = length + 1, length + 150
  for split in base.SPLITS:
    for i in range(40 if split == "train" else 10):
      ex = task.example(split, i)
      words = ex.question.split()
      assert words[-1] == "=" and len(words) == length + 1
      values = [int(w) for w in words[:-1]]
      assert all(lo <= v < hi for v in values)
      dp, answer = _lis_quadratic(values)
      want = f"{' '.join(map(str, dp))} = {answer}" if cot else str(answer)
      assert ex.answer == want
      assert answer >= 1
      assert ex == LisTask(length, cot=cot, seed=1).example(split, i)


def test_lis_ending_at_on_edge_cases():
  g = np.random.default_rng(0)
  for _ in range(200):  # small ranges force many ties (strictly increasing: ties do not extend).
    values = [int(v) for v in g.integers(0, 4, size=int(g.integers(1, 12)))]
    assert lis_ending_at(values) == _lis_quadratic(values)[0]
  assert lis_ending_at([5, 5, 5]) == [1, 1, 1]
  assert lis_ending_at([1, 2, 3]) == [1, 2, 3]


def test_lis_generator_plants_long_runs():
  # The planted runs make the answers spread over a wide range (not the ~2 sqrt(L) of uniform data).
  task = LisTask(50, seed=0)
  answers = [int(task.example("train", i).answer) for i in range(300)]
  assert min(answers) < 10 and max(answers) > 30


def test_lis_splits_disjoint_and_tokenizer_roundtrip():
  task = LisTask(20, cot=True, seed=0, test_fraction=0.1)
  train = {task.example("train", i).question for i in range(400)}
  test = {task.example("test", i).question for i in range(100)}
  assert not train & test
  ex = task.example("train", 0)
  ids = task.tokenizer.encode(ex.text)
  assert len(ids) == 2 * 20 + 3  # one token per number, two '=', the answer.
  assert task.tokenizer.decode(ids) == ex.text
  assert task.tokenizer.vocab_size == 16 + 20 + 150 + 1
  with pytest.raises(ValueError, match="not in the vocabulary"):
    NumberTokenizer(10).encode("3 10")


def test_lis_rejects_bad_settings():
  with pytest.raises(ValueError, match="number_range"):
    LisTask(50, number_range=80)
  with pytest.raises(ValueError, match="length"):
    LisTask(2)


# -------------------------------------------------------------------------- registry and pipeline


def _config(task: str, seq_len: int):
  c = default_config()
  c.data.task = task
  c.data.seq_len = seq_len
  c.data.multiplication.num_digits = 3
  c.data.lis.length = 10
  c.train.batch_size = 4
  c.eval.num_examples = 6
  c.eval.batch_size = 4
  validate(c)
  return c


@pytest.mark.parametrize(
  "task,cot,seq_len",
  [("multiplication", False, 20), ("multiplication", True, 44), ("lis", False, 13), ("lis", True, 24)],
)
def test_pipeline_builds_batches(task, cot, seq_len):
  c = _config(task, seq_len)
  c.data[task].cot = cot
  assert task in tasks.known_tasks()
  built = tasks.get_task(c.data, int(c.seed))
  assert built.name == task
  # seq_len is exactly the need: one less fails with the seq_len error before training.
  short = _config(task, seq_len - 1)
  short.data[task].cot = cot
  with pytest.raises(ValueError, match="seq_len"):
    pipeline.make_train_iterator(short)
  batch = next(pipeline.make_train_iterator(c))
  assert batch["inputs"].shape == (4, seq_len)
  for row in range(4):
    ex = built.example("train", row)
    seq = [
      built.tokenizer.bos_id,
      *built.tokenizer.encode(ex.question),
      *built.tokenizer.encode(ex.answer),
      built.tokenizer.eos_id,
    ]
    np.testing.assert_array_equal(batch["inputs"][row][: len(seq) - 1], seq[:-1])
    assert batch["answer_mask"][row].sum() == len(built.tokenizer.encode(ex.answer)) + 1
  evals = pipeline.make_eval_batches(c)
  assert [b["inputs"].shape for b in evals] == [(4, seq_len)] * 2
  assert evals[1]["example_mask"].tolist() == [1.0, 1.0, 0.0, 0.0]
  assert pipeline.vocab_size_for(c) == built.tokenizer.vocab_size


def test_pipeline_reads_official_eval_file():
  c = _config("multiplication", 24)
  c.data.multiplication.num_digits = 4
  c.data.multiplication.eval_file = str(DATA / "{n}x{n}_test.txt")
  task = tasks.get_task(c.data, 0)
  first = task.example("test", 0)
  batch = pipeline.make_eval_batches(c)[0]
  want = task.tokenizer.encode(first.question)
  np.testing.assert_array_equal(batch["inputs"][0][1 : 1 + len(want)], want)
  assert first.question + first.answer == "1 3 4 5 * 8 1 9 3||#### 8 5 6 8 7 2 1 2"


def test_validate_rejects_bad_task_fields():
  for field, value in (
    ("multiplication.num_digits", 0),
    ("multiplication.test_fraction", 0.7),
    ("lis.length", 2),
    ("lis.number_range", 60),
    ("lis.test_fraction", 0.0),
  ):
    c = default_config()
    group, name = field.split(".")
    c.data[group][name] = value
    with pytest.raises(ValueError, match=f"data.{field}"):
      validate(c)
