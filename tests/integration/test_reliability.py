"""Reliability of a training run in process: the workdir lock refuses a second run, each segment keeps its
config record, and the NaN message names the last good step. (Checkpoint damage:
test_checkpoint_damage.py; the programs: tests/e2e/test_reliability_cli.py.)"""

from __future__ import annotations

import json
import os

import pytest

from lime_jax import checkpoint
from lime_jax.runtime import workdir_lock
from lime_jax.train import loop as train_lib
from tests.helpers.runs import tiny_config


# ----------------------------------------------------------------------------------------------- lock
def test_a_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  with workdir_lock.held(str(tmp_path)):
    with pytest.raises(
      workdir_lock.WorkdirLockedError, match=rf"in use by another training run: pid {os.getpid()} on host "
    ):
      train_lib.train(tiny_config(num_steps=2), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["lock.json"]  # the refused run wrote nothing
  assert (tmp_path / "lock.json").read_text() == ""  # released


# ---------------------------------------------------------------------------- config records, evaluate
def test_each_segment_keeps_its_config_and_evaluate_reads_a_locked_workdir(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  first = tiny_config(num_steps=4, checkpoint_every=2)
  train_lib.train(first, workdir)
  read = lambda name: json.loads((tmp_path / "run" / name).read_text())["train"]["learning_rate"]
  assert read("config.0.json") == read("config.json") == first.train.learning_rate
  again = tiny_config(num_steps=4, checkpoint_every=2)
  again.train.learning_rate = 2e-3
  capsys.readouterr()
  train_lib.train(again, workdir)  # the finished run started again with another learning rate
  assert (read("config.0.json"), read("config.4.json"), read("config.json")) == (
    first.train.learning_rate,
    2e-3,
    2e-3,
  )
  assert f"train.learning_rate: {first.train.learning_rate!r} -> 0.002" in capsys.readouterr().out

  for name in ("config.0.json", "config.4.json"):  # a workdir from before these records
    (tmp_path / "run" / name).unlink()
  train_lib.train(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  assert read("config.before-4.json") == 2e-3 and read("config.4.json") == first.train.learning_rate

  with workdir_lock.held(workdir):
    step = checkpoint.restore_params(workdir).step
  assert step == 4


def test_the_nan_message_names_the_real_last_good_step_and_the_likely_causes(tmp_path):
  config = tiny_config(num_steps=12, checkpoint_every=100, warmup_steps=0, grad_clip=0.0)
  config.train.learning_rate = 1e38
  with pytest.raises(train_lib.NonFiniteLossError) as caught:
    train_lib.train(config, str(tmp_path / "nan"))
  message = str(caught.value)
  assert "step None" not in message and "No checkpoint was written yet" in message
  assert "Likely causes, most likely first: (1) the learning rate is too high" in message
  resumed = train_lib.non_finite_message(
    31, {"loss": float("nan"), "grad_norm": 1.0}, 30, 30, "/ckpt", config
  )
  assert "The last good checkpoint is step 30 in /ckpt" in resumed and "(1) step 30, just restored" in resumed
