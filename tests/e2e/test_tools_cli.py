"""`python -m lime_jax.tools.sample` on a checkpoint and `python -m lime_jax.tools.info` on a config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from lime_jax.model import flops, init_params
from lime_jax.tools import info, sample
from lime_jax.train import loop as train_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _tiny(num_steps: int = 2):
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(num_steps=num_steps, checkpoint_every=num_steps, async_checkpoint=False, log_every=1)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step tiny arithmetic run trained in-process: (workdir, TrainResult)."""
  workdir = str(tmp_path_factory.mktemp("tools") / "run")
  return workdir, train_lib.train(_tiny(), workdir)


def test_sample_cli_on_a_checkpoint(trained):
  workdir, result = trained
  texts = sample.generate(workdir, "1+2=", temperature=0.0, max_new=5, num_samples=2)
  assert len(texts) == 2 and texts[0] == texts[1]  # greedy: every sample the same
  with pytest.raises(ValueError, match=r"--prompt='hello'.*cannot encode"):
    sample.generate(workdir, "hello")
  with pytest.raises(ValueError, match=r"--top_p=0"):
    sample.generate(workdir, "1+2=", top_p=0.0)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.sample",
      f"--workdir={workdir}",
      "--prompt=1+2=",
      "--temperature=0",
      "--max_new_tokens=5",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == f"[0] 1+2={texts[0]}"


# -------------------------------------------------------------------------------------------- info
def test_info_reports_size_flops_and_memory_without_training(tmp_path):
  config = _tiny()
  got = info.config_info(config)
  run = train_lib.build(config)
  assert got["params"] == train_lib.param_count(
    jax.eval_shape(lambda r: init_params(run.model_cfg, r), jax.random.key(0))
  )
  assert got["flops_per_step_train"] == flops.train_flops_per_step(run.model_cfg, 8, config.data.seq_len)
  assert got["optimizer_state_mib"] > got["params_mib"] > 0  # Adam: two moments per parameter
  assert got["memory/temp_size_mib"] > 0 and got["memory/argument_size_mib"] > 0
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.info",
      "--config=experiments/baseline.py:tiny",
      "--config.model.num_layers=3",
      "--json",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  three = json.loads(proc.stdout)
  assert three["model"]["num_layers"] == 3 and three["params"] > got["params"]
  assert "memory/temp_size_mib" in three
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.info",
      "--config=experiments/baseline.py:tiny",
      "--config.model.d_model=30",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "config.model.d_model=30" in proc.stderr
