"""Registry of the synthetic tasks, keyed by `config.data.task`.

Adding a task is one entry in `REGISTRY` (its name -> its class) and one field of the data section
(lime_jax/config/sections.py `DataConfig`, a sub-section of the task's `Config` type). A task class declares
its settings as a frozen dataclass `Config` (the `config.data.<name>` section: defaults, docs, choices,
ranges and rules, written once in the task's module) and takes them as keyword arguments, plus `seed`.
The 'text' task is not here: it is a corpus, not a question/answer generator, and `pipeline.py` routes it
to `text.py`.
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections

from lime_jax.data import arithmetic, base, copying, counting, lis, multiplication
from lime_jax.runtime import options

REGISTRY: dict[str, type] = {
  "arithmetic": arithmetic.ArithmeticTask,
  "multiplication": multiplication.MultiplicationTask,
  "lis": lis.LisTask,
  "copying": copying.CopyingTask,
  "counting": counting.CountingTask,
}

TEXT_TASK = "text"


def known_tasks() -> tuple[str, ...]:
  """Names accepted by `config.data.task` (the generators plus 'text')."""
  return (*REGISTRY, TEXT_TASK)


def task_class(name: str) -> type:
  """The class of task `name`; raises naming config.data.task when it has no generator."""
  if name not in REGISTRY:
    hint = (
      " 'text' is a corpus: use pipeline.make_train_iterator / make_eval_batches."
      if name == TEXT_TASK
      else ""
    )
    raise ValueError(
      f"config.data.task={name!r} has no generator; known tasks: {', '.join(map(repr, known_tasks()))}.{hint}"
    )
  return REGISTRY[name]


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
  """The task named by `data_config.task`, built from its section (`data_config.<task>`, checked by the
  task) and `seed`; with `data.tokenizer` set, its examples are encoded with that tokenizer (pause ids
  appended when `data.num_pause > 0`)."""
  name = data_config.task
  cls = task_class(name)
  node = data_config[name] if name in data_config else {}  # a saved config from before the task
  settings = options.from_node(cls.Config, node)
  task = cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}, seed=seed)
  if data_config.get("tokenizer"):
    return WithTokenizer(task, _subword(str(data_config.tokenizer), int(data_config.num_pause) > 0))
  return task
