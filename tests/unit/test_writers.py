"""Metrics writers: records up to a step, and the wandb sink (off by default, its mode validated)."""

from __future__ import annotations

import sys

import pytest

from lime_jax.train import writers


def test_records_up_to_drops_later_and_cut_lines():
  from lime_jax.train import writers

  text = '{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 2, "x": 1}\n{"step": 2'
  assert writers.records_up_to(text, 2) == '{"step": 1}\n{"step": 2}\n{"step": 2, "x": 1}\n'
  evals = '{"step": 1, "split": "eval"}\n{"step": 2, "split": "train"}\n{"step": 2, "split": "eval"}\n'
  assert writers.records_up_to(evals, 2, drop_eval_at_step=True) == (
    '{"step": 1, "split": "eval"}\n{"step": 2, "split": "train"}\n'
  )


def _tiny(num_steps: int = 2):
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(num_steps=num_steps, checkpoint_every=num_steps, async_checkpoint=False, log_every=1)
  return config


def test_wandb_is_off_by_default_and_missing_wandb_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  config = _tiny()
  assert writers.make_wandb_sink(config, str(tmp_path)) is None  # off: wandb is never imported
  config.train.wandb.project = "lime"
  assert writers.make_wandb_sink(config, str(tmp_path), enabled=False) is None  # processes other than 0
  with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'.*train\.wandb\.project=''"):
    writers.make_wandb_sink(config, str(tmp_path))


def test_wandb_mode_is_validated():
  from lime_jax import config as config_lib

  config = _tiny()
  config.train.wandb.mode = "cloud"
  with pytest.raises(ValueError, match=r"config\.train\.wandb\.mode"):
    config_lib.validate(config)
