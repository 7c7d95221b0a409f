"""Tests of the synthetic-task data path: tokenizer, arithmetic generator, encoding, grain iterator."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from lime_jax.config import default_config, validate
from lime_jax.data import base, pipeline, tasks
from lime_jax.data.arithmetic import ArithmeticTask
from lime_jax.data.tokenizer import ByteTokenizer, CharTokenizer

P = 11


# ------------------------------------------------------------------ independent reference evaluator


def _evaluate(tokens: list[str], modulus: int = P) -> int:
  """Value of a space-tokenised expression mod `modulus` (precedence * / over + -, left to right)."""
  pos = 0

  def peek():
    return tokens[pos] if pos < len(tokens) else None

  def take():
    nonlocal pos
    pos += 1
    return tokens[pos - 1]

  def factor() -> int:
    tok = take()
    if tok == "(":
      value = expr()
      assert take() == ")", tokens
      return value
    assert tok.isdigit() and 0 <= int(tok) < modulus, (tok, tokens)
    return int(tok)

  def term() -> int:
    value = factor()
    while peek() in ("*", "/"):
      op, rhs = take(), factor()
      if op == "*":
        value = value * rhs % modulus
      else:
        assert rhs != 0, f"division by zero in {tokens}"
        value = value * pow(rhs, modulus - 2, modulus) % modulus  # Fermat inverse.
    return value

  def expr() -> int:
    value = term()
    while peek() in ("+", "-"):
      op, rhs = take(), term()
      value = (value + rhs if op == "+" else value - rhs) % modulus
    return value

  result = expr()
  assert pos == len(tokens), f"trailing tokens in {tokens}"
  return result


def _one_step_reductions(tokens: list[str], modulus: int = P) -> list[list[str]]:
  """Every expression obtained by replacing one `a op b` / `( a op b )` of numbers by its value."""
  out = []
  for k in range(1, len(tokens) - 1):
    a, op, b = tokens[k - 1], tokens[k], tokens[k + 1]
    if op not in "+-*/" or not (a.isdigit() and b.isdigit()):
      continue
    if op == "/" and int(b) == 0:
      continue
    value = str(_evaluate([a, op, b], modulus))
    out.append(tokens[: k - 1] + [value] + tokens[k + 2 :])
    if k >= 2 and k + 2 < len(tokens) and tokens[k - 2] == "(" and tokens[k + 2] == ")":
      out.append(tokens[: k - 2] + [value] + tokens[k + 3 :])
  return out


def _num_ops(tokens: list[str]) -> int:
  return sum(t in "+-*/" for t in tokens)


def test_reference_evaluator_on_spec_example():
  assert _evaluate("7 - ( 10 - ( 1 + 6 * 8 ) )".split()) == 2
  assert _evaluate("3 / 4 * 2".split()) == 3 * pow(4, -1, P) * 2 % P
  assert ["2", "+", "6"] in _one_step_reductions("2 + ( 1 + 5 )".split())


# ------------------------------------------------------------------------------------- tokenizer


def test_char_tokenizer_round_trip_and_specials():
  tok = CharTokenizer("0123456789+-*/()=")
  assert tok.vocab_size == 16 + 17
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3)
  assert (tok.pause_start_id, tok.pause_id, tok.pause_end_id) == (4, 5, 6)
  text = "7 - ( 10 - ( 1 + 6 * 8 ) ) = 2"
  ids = tok.encode(text)
  assert len(ids) == len(text.replace(" ", "")) and min(ids) >= 16
  assert tok.decode(ids) == text.replace(" ", "")
  framed = [tok.bos_id, *ids, tok.pause_start_id, tok.pause_id, tok.pause_end_id, tok.eos_id, 0, 0]
  assert tok.decode(framed) == "<bos>7-(10-(1+6*8))=2</pause_start><pause></pause_end><eos>"
  assert tok.decode([tok.pad_id, *ids[:1], 0]) == "<pad>7"
  with pytest.raises(ValueError, match="'x'"):
    tok.encode("1 x 2")
  keep = CharTokenizer("ab ", drop_spaces=False)
  assert keep.decode(keep.encode("a b")) == "a b"
  with pytest.raises(ValueError, match="drop_spaces"):
    CharTokenizer("ab ")


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  assert tok.vocab_size == 272
  text = "Héllo, wörld — ok\n"
  ids = tok.encode(text)
  assert ids == [b + 16 for b in text.encode("utf-8")]
  assert tok.decode(ids + [tok.eos_id, 0, 0]) == text + "<eos>"


# ------------------------------------------------------------------------------- arithmetic task


def test_examples_are_deterministic_and_seeded():
  a, b = ArithmeticTask(4, seed=0), ArithmeticTask(4, seed=0)
  for split in base.SPLITS:
    assert [a.example(split, i) for i in range(50)] == [b.example(split, i) for i in range(50)]
  assert a.example("train", 7) == a.example("train", 7)
  other = ArithmeticTask(4, seed=1)
  same = sum(a.example("train", i) == other.example("train", i) for i in range(50))
  assert same <= 2
  assert len({a.example("train", i).question for i in range(200)}) >= 195


def test_train_and_test_are_disjoint():
  task = ArithmeticTask(4, test_fraction=0.01, seed=3)
  train = {task.example("train", i).question for i in range(3000)}
  test = {task.example("test", i).question for i in range(2000)}
  assert not train & test
  assert len(test) > 1900
  assert all(base.in_test_region(q, 0.01) for q in test)
  assert not any(base.in_test_region(q, 0.01) for q in train)


@pytest.mark.parametrize("num_operators", [1, 2, 4, 6])
def test_direct_answers_are_correct(num_operators):
  task = ArithmeticTask(num_operators, cot=False, seed=5)
  ops = collections.Counter()
  for split, n in (("train", 400), ("test", 50)):
    for i in range(n):
      ex = task.example(split, i)
      assert ex.question.endswith(" =") and "=" not in ex.answer
      tokens = ex.question.split()[:-1]
      assert " ".join(tokens + ["="]) == ex.question  # single spaces.
      assert _num_ops(tokens) == num_operators
      assert _evaluate(tokens) == int(ex.answer)
      ops.update(t for t in tokens if t in "+-*/")
  assert set(ops) == set("+-*/")


@pytest.mark.parametrize("num_operators", [1, 3, 5])
def test_cot_steps_are_one_operation_reductions(num_operators):
  direct = ArithmeticTask(num_operators, cot=False, seed=2)
  task = ArithmeticTask(num_operators, cot=True, seed=2)
  for i in range(300):
    ex = task.example("train", i)
    assert ex.question == direct.example("train", i).question
    chain = [ex.question[:-2].split()] + [s.split() for s in ex.answer.split(" = ")]
    assert len(chain) == num_operators + 1
    assert chain[-1] == [direct.example("train", i).answer]
    value = _evaluate(chain[0])
    for prev, nxt in zip(chain, chain[1:]):
      assert nxt in _one_step_reductions(prev), (prev, nxt)
      assert _num_ops(nxt) == _num_ops(prev) - 1
      assert _evaluate(nxt) == value


def test_outermost_expression_has_no_parentheses():
  task = ArithmeticTask(4, seed=0)
  for i in range(300):
    tokens = task.example("train", i).question.split()[:-1]
    if tokens[0] == "(":  # the group opened first must close before the end.
      depth = 0
      for j, t in enumerate(tokens):
        depth += (t == "(") - (t == ")")
        if depth == 0:
          assert j < len(tokens) - 1, tokens
          break


def test_longest_example_bounds_every_example():
  for cot in (False, True):
    task = ArithmeticTask(5, cot=cot, seed=0)
    tok = task.tokenizer
    bound = pipeline.required_seq_len(tok, task.longest_example())
    worst = max(pipeline.required_seq_len(tok, task.example("train", i)) for i in range(500))
    assert worst <= bound


# ------------------------------------------------------------------------------------ encoding


def test_encode_example_masks_with_pauses():
  tok = CharTokenizer("0123456789+-*/()=")
  ex = base.Example("1 + 2 * 3 =", "1 + 6 = 7")
  f = pipeline.encode_example(tok, ex, seq_len=32, num_pause=3, loss_scope="answer")
  assert {k: (v.shape, v.dtype.name) for k, v in f.items()} == {
    "inputs": ((32,), "int32"),
    "targets": ((32,), "int32"),
    "loss_mask": ((32,), "float32"),
    "answer_mask": ((32,), "float32"),
  }
  np.testing.assert_array_equal(f["inputs"][1:], f["targets"][:-1])
  assert tok.decode(f["inputs"]) == ("<bos>1+2*3=</pause_start><pause><pause><pause></pause_end>1+6=7<eos>")
  prefix = 1 + 6 + 5  # BOS, question, pause block: the answer starts at input position 12.
  mask = f["loss_mask"]
  assert mask[: prefix - 1].sum() == 0  # question and pause targets carry no loss.
  assert mask[prefix - 1 : prefix + 5].all() and mask.sum() == 6  # answer (5 symbols) + EOS.
  np.testing.assert_array_equal(mask, f["answer_mask"])
  answer_targets = f["targets"][mask > 0]
  assert tok.decode(answer_targets) == "1+6=7<eos>"
  assert f["targets"][mask == 0][-1] == tok.pad_id

  g = pipeline.encode_example(tok, ex, seq_len=32, num_pause=3, loss_scope="all")
  np.testing.assert_array_equal(g["answer_mask"], f["answer_mask"])
  pause = np.isin(g["targets"], [4, 5, 6])
  assert pause.sum() == 5 and g["loss_mask"][pause].sum() == 0
  assert g["loss_mask"].sum() == (g["targets"] != 0).sum() - 5
  assert g["loss_mask"][0] == 1  # first question token is predicted from BOS.


def test_encode_example_without_pause_has_no_sep():
  tok = CharTokenizer("0123456789+-*/()=")
  f = pipeline.encode_example(tok, base.Example("3 - 4 =", "10"), 8, 0, "answer")
  assert tok.decode(f["inputs"]) == "<bos>3-4=10<eos>"
  assert tok.decode(f["targets"] * f["answer_mask"].astype(np.int32)) == "<pad>" * 4 + "10<eos>"


def test_seq_len_error_names_field_and_needed_length():
  tok = CharTokenizer("0123456789+-*/()=")
  ex = base.Example("1 + 2 =", "3")  # BOS 1+2= 3 EOS: 7 tokens -> seq_len 6.
  pipeline.encode_example(tok, ex, 6, 0, "answer")
  with pytest.raises(ValueError, match=r"data\.seq_len=5 .*seq_len >= 6"):
    pipeline.encode_example(tok, ex, 5, 0, "answer")
  with pytest.raises(ValueError, match=r"seq_len >= 9"):
    pipeline.encode_example(tok, ex, 8, 1, "answer")  # + PAUSE_START PAUSE PAUSE_END.
  c = default_config()
  c.data.seq_len, c.data.arithmetic.cot = 32, True
  with pytest.raises(ValueError, match=r"config\.data\.seq_len=32 .*seq_len >= \d+"):
    pipeline.make_train_iterator(c)


def test_unknown_task_error():
  c = default_config()
  c.data.task = "sorting"
  with pytest.raises(ValueError, match=r"config\.data\.task='sorting'.*'arithmetic'"):
    tasks.get_task(c.data, 0)
  with pytest.raises(ValueError, match="choose one of"):
    validate(c)


# ------------------------------------------------------------------------------------ iterator


def _config(batch_size: int = 8, **data):
  c = default_config()
  c.train.batch_size = batch_size
  c.data.arithmetic.num_operators = 3
  for k, v in data.items():
    c.data[k] = v
  validate(c)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].dtype == b[k].dtype
      np.testing.assert_array_equal(a[k], b[k])


def test_train_batches_follow_global_index_order():
  c = _config(batch_size=6)
  batches = _take(pipeline.make_train_iterator(c), 3)
  task = tasks.get_task(c.data, c.seed)
  for step, batch in enumerate(batches):
    assert batch["inputs"].shape == (6, c.data.seq_len)
    for row in range(6):
      want = pipeline.encode_example(
        task.tokenizer,
        task.example("train", step * 6 + row),
        c.data.seq_len,
        c.data.num_pause,
        c.data.loss_scope,
      )
      for k in want:
        np.testing.assert_array_equal(batch[k][row], want[k])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_global_batch(process_count):
  c = _config(batch_size=8)
  full = _take(pipeline.make_train_iterator(c), 3)
  parts = [_take(pipeline.make_train_iterator(c, p, process_count), 3) for p in range(process_count)]
  for step in range(3):
    assert parts[0][step]["inputs"].shape[0] == 8 // process_count
    joined = {k: np.concatenate([p[step][k] for p in parts]) for k in full[step]}
    _assert_same([joined], [full[step]])


def test_batch_size_must_divide_process_count():
  with pytest.raises(ValueError, match=r"train\.batch_size=6 .*divisible"):
    pipeline.make_train_iterator(_config(batch_size=6), 0, 4)


def test_iterator_state_round_trip():
  c = _config()
  it = pipeline.make_train_iterator(c)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = pipeline.make_train_iterator(c)
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), expected)


# ----------------------------------------------------------------------------------------- eval


def test_eval_batches_pad_last_batch():
  c = _config()
  batches = pipeline.make_eval_batches(c, num_examples=10, batch_size=4)
  assert len(batches) == 3
  assert all(b["inputs"].shape == (4, c.data.seq_len) for b in batches)
  np.testing.assert_array_equal(batches[-1]["example_mask"], [1, 1, 0, 0])
  np.testing.assert_array_equal(batches[0]["example_mask"], [1, 1, 1, 1])
  for k in ("loss_mask", "answer_mask", "inputs", "targets"):
    assert not batches[-1][k][2:].any()
  assert batches[-1]["answer_mask"][:2].sum(1).min() > 0
  task = tasks.get_task(c.data, c.seed)
  first = pipeline.encode_example(task.tokenizer, task.example("test", 0), c.data.seq_len, 0, "answer")
  np.testing.assert_array_equal(batches[0]["inputs"][0], first["inputs"])
  default = pipeline.make_eval_batches(c)
  assert len(default) == -(-c.eval.num_examples // c.eval.batch_size)
  assert default[0]["inputs"].shape[0] == c.eval.batch_size


def test_vocab_size_for():
  c = _config()
  assert pipeline.vocab_size_for(c) == 33
  c.data.task = "text"
  assert pipeline.vocab_size_for(c) == 272
