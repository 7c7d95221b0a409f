"""Registry of the synthetic tasks, keyed by `config.data.task`.

Adding a task is one entry in `_REGISTRY`: a name and a factory `(data_config, seed) -> Task` that reads
the task's own sub-config (e.g. `config.data.multiplication`). The 'text' task is not here: it is a
corpus, not a question/answer generator, and `pipeline.py` routes it to `text.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import ml_collections

from lime_jax.data import arithmetic, base, copying, counting, lis, multiplication

TaskFactory = Callable[[ml_collections.ConfigDict, int], base.Task]


def _arithmetic(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  a = data_config.arithmetic
  return arithmetic.ArithmeticTask(
    num_operators=int(a.num_operators),
    cot=bool(a.cot),
    modulus=int(a.modulus),
    test_fraction=float(a.test_fraction),
    seed=int(seed),
  )


def _multiplication(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  m = data_config.multiplication
  return multiplication.MultiplicationTask(
    num_digits=int(m.num_digits),
    cot=bool(m.cot),
    seed=int(seed),
    eval_file=str(m.eval_file),
    test_fraction=float(m.test_fraction),
    answer_marker=bool(m.answer_marker),
  )


def _lis(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  s = data_config.lis
  return lis.LisTask(
    length=int(s.length),
    cot=bool(s.cot),
    number_range=int(s.number_range),
    test_fraction=float(s.test_fraction),
    seed=int(seed),
  )


def _copying(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  c = data_config.copying
  return copying.CopyingTask(
    variant=str(c.variant),
    min_length=int(c.min_length),
    max_length=int(c.max_length),
    test_fraction=float(c.test_fraction),
    seed=int(seed),
  )


def _counting(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  c = data_config.counting
  return counting.CountingTask(
    variant=str(c.variant),
    min_length=int(c.min_length),
    max_length=int(c.max_length),
    p_one=float(c.p_one),
    test_fraction=float(c.test_fraction),
    seed=int(seed),
  )


_REGISTRY: dict[str, TaskFactory] = {
  "arithmetic": _arithmetic,
  "multiplication": _multiplication,
  "lis": _lis,
  "copying": _copying,
  "counting": _counting,
}

TEXT_TASK = "text"


def known_tasks() -> tuple[str, ...]:
  """Names accepted by `config.data.task` (the generators plus 'text')."""
  return (*_REGISTRY, TEXT_TASK)


class WithTokenizer:
  """A task whose examples are encoded with another tokenizer (`data.tokenizer`, e.g. GPT-2's BPE for a
  model fine-tuned from it); everything else is the wrapped task's."""

  def __init__(self, task: base.Task, tokenizer: base.Tokenizer):
    self._task, self.tokenizer = task, tokenizer

  def __getattr__(self, name: str):
    if name.startswith("__") or name == "_task":  # pickling looks these up before __init__ ran
      raise AttributeError(name)
    return getattr(self._task, name)


@functools.lru_cache(maxsize=8)
def _subword(path: str, pause_tokens: bool) -> base.Tokenizer:
  from lime_jax.data import subword  # pylint: disable=import-outside-toplevel

  return subword.load_tokenizer(path, pause_tokens=pause_tokens)


def get_task(data_config: ml_collections.ConfigDict, seed: int) -> base.Task:
  """The task named by `data_config.task`, built from its sub-config and `seed`; with `data.tokenizer`
  set, its examples are encoded with that tokenizer (pause ids appended when `data.num_pause > 0`)."""
  name = data_config.task
  if name not in _REGISTRY:
    hint = (
      " 'text' is a corpus: use pipeline.make_train_iterator / make_eval_batches."
      if name == TEXT_TASK
      else ""
    )
    raise ValueError(
      f"config.data.task={name!r} has no generator; known tasks: {', '.join(map(repr, known_tasks()))}.{hint}"
    )
  task = _REGISTRY[name](data_config, seed)
  if data_config.get("tokenizer"):
    return WithTokenizer(task, _subword(str(data_config.tokenizer), int(data_config.num_pause) > 0))
  return task
