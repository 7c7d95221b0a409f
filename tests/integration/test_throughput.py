"""Throughput reporting of a training run: tokens/s and MFU leave out checkpoint and eval time."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.train import loop as train_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _tiny_config(**train_overrides):
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train_overrides)
  return config


def test_tokens_per_s_and_mfu_leave_out_checkpoint_and_eval_time(tmp_path, monkeypatch):
  """A 1.5 s checkpoint and a 1.5 s evaluation at step 2 do not lower the throughput of steps 3-4, and
  MFU is a percentage of the peak in compile_report.json."""
  save, evaluate = ckpt_lib.Checkpointer.save, train_lib.evaluate

  def slow_save(self, *args, **kwargs):
    time.sleep(1.5)
    return save(self, *args, **kwargs)

  def slow_evaluate(*args, **kwargs):
    time.sleep(1.5)
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", slow_save)
  monkeypatch.setattr(train_lib, "evaluate", slow_evaluate)
  config = _tiny_config(num_steps=4, checkpoint_every=2, log_every=2, eval_every=2)
  workdir = tmp_path / "run"
  train_lib.train(config, str(workdir))
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  step4 = next(r for r in records if r["split"] == "train" and r["step"] == 4)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  # Counting the 3 s of checkpoint and eval would give < 2 steps / 3 s.
  assert step4["tokens_per_s"] > 2 / 1.0 * tokens_per_step
  report = json.loads((workdir / "compile_report.json").read_text())
  steps_per_s = step4["tokens_per_s"] / tokens_per_step
  expected_pct = (
    100
    * steps_per_s
    * report["flops_per_step_analytic"]
    / (report["peak_flops_per_device"] * jax.device_count())
  )
  assert step4["mfu_pct"] == pytest.approx(expected_pct, rel=1e-6)
  assert "mfu" not in step4
