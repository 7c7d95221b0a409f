"""Tiny training runs shared by the tiers: the repository root, the tiny baseline config, and a bitwise
comparison of two runs' checkpointed states."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from lime_jax import checkpoint as ckpt_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def tiny_config(**train_overrides):
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train_overrides)
  return config


def assert_same_state(workdir_a, workdir_b, step: int) -> None:
  """The two runs' checkpoints at `step` hold the same parameters and optimizer state, bit for bit."""
  _, a = ckpt_lib.restore_raw_state(str(workdir_a), step)
  _, b = ckpt_lib.restore_raw_state(str(workdir_b), step)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
