"""Imports in a fresh interpreter: the registries import nothing heavy, the experiments are importable
from another directory, and the old tool paths exit naming the new ones."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_old_tool_path_exits_naming_the_new_one():
  proc = subprocess.run(
    [sys.executable, "-m", "lime_jax.sweep", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
  )
  assert proc.returncode == 2, proc
  assert "lime_jax.sweep moved: run python -m lime_jax.tools.sweep <same args>" in proc.stderr


def test_registries_import_nothing_heavy():
  """lime_jax.config may read the registries' names: importing them must not import Flax or the model."""
  code = (
    "import sys; from lime_jax.model import routers, topologies; "
    "print(sorted(m for m in ('flax', 'lime_jax.model.lime', 'lime_jax.model.transformer') "
    "if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


def _tiny(num_steps: int = 2):
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(num_steps=num_steps, checkpoint_every=num_steps, async_checkpoint=False, log_every=1)
  return config


# ----------------------------------------------------------------------- experiments from any directory
def test_experiments_import_from_another_directory(tmp_path):
  code = "import lime_jax.experiments.baseline as b; print(b.get_config('tiny').model.num_layers)"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str(_tiny().model.num_layers)
