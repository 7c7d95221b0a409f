"""Copying and counting as training tasks: formats, determinism, splits, config and pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax.data import copying, counting, pipeline, tasks


def test_copying_formats_and_canonical_prompts():
  assert copying.canonical_example("last", 4).text == "last:1110= 0"
  assert copying.canonical_example("first", 4).text == "first:0111= 0"
  assert copying.canonical_example("hint", 2).question == "last:10 It's not necessarily a 1, check carefully="
  assert copying.canonical_example("interleaved", 5).question == "last:10100="
  task = copying.CopyingTask(seed=0)
  for variant in copying.VARIANTS:
    for i in range(20):
      e = task.example_at("test", i, 7, variant)
      digits = "".join(ch for ch in e.question.split(":")[1].split(" ")[0] if ch.isdigit())
      assert len(digits) == 7
      assert e.answer == (digits[0] if variant == "first" else digits[-1])


def test_counting_answers_are_counts():
  task = counting.CountingTask(seed=0)
  assert task.example_at("train", 0, 5, "sum").text == "1+1+1+1+1= 5"
  assert task.example_at("train", 0, 3, "ones").text == "count:111= 3"
  for i in range(20):
    e = task.example_at("test", i, 30, "bits")
    assert int(e.answer) == e.question.count("1")
    w = task.example_at("test", i, 12, "word")
    target, sentence = w.question[len("count ") : -1].split(":")
    assert int(w.answer) == sentence.split(" ").count(target) and len(sentence.split(" ")) == 12
  ones = [task.example_at("train", i, 200, "bits").question.count("1") for i in range(50)]
  assert 0.6 < np.mean(ones) / 200 < 0.8  # P(1) = 0.7


@pytest.mark.parametrize("name", ["copying", "counting"])
def test_registered_deterministic_and_split_disjoint(name):
  config = config_lib.default_config()
  config.data.task = name
  config.data.seq_len = 160
  config_lib.validate(config)
  task = tasks.get_task(config.data, 0)
  again = tasks.get_task(config.data, 0)
  assert [task.example("train", i) for i in range(30)] == [again.example("train", i) for i in range(30)]
  from lime_jax.data import base

  for i in range(200):  # hash-split variants (sum / ones have one question per length: not split)
    for split in ("train", "test"):
      e = task.example(split, i)
      if e.question.startswith("1+") or set(e.question[6:-1]) == {"1"} or len(e.question) < 9:
        continue
      assert base.in_test_region(e.question, 0.1) == (split == "test"), e
  lengths = [len(task.example("train", i).question) for i in range(300)]
  assert max(lengths) > 3 * min(lengths)  # lengths vary over [min_length, max_length]
  batch = pipeline.make_eval_batches(config, num_examples=4, batch_size=4)[0]
  assert batch["inputs"].shape == (4, 160) and batch["answer_mask"].sum() >= 8


def test_config_validation_names_the_field():
  config = config_lib.default_config()
  config.data.copying.min_length = 0
  with pytest.raises(ValueError, match="data.copying.min_length"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.data.counting.variant = "bogus"
  with pytest.raises(ValueError, match="data.counting.variant"):
    config_lib.validate(config)


@pytest.mark.parametrize("task_class", [copying.CopyingTask, counting.CountingTask])
def test_a_task_built_directly_names_its_variant_field(task_class):
  with pytest.raises(ValueError, match=rf"config.data.{task_class.name}.variant='bogus'.*'mixed'"):
    task_class(variant="bogus")
  assert task_class(variant=task_class.variants[-1]).variant == task_class.variants[-1]


def test_seq_len_check_uses_longest_example():
  config = config_lib.default_config()
  config.data.task = "copying"
  config.data.seq_len = 40
  with pytest.raises(ValueError, match="data.seq_len"):
    pipeline.make_eval_batches(config, num_examples=2, batch_size=2)
