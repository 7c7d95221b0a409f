"""`config.model.init_from` specs, vocabulary resizing and the presets that need a source."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from lime_jax.train import init_from
from lime_jax.train import loop as train_lib
from tests.helpers import hf_tiny


def _experiment(name):
  path = os.path.join(hf_tiny.REPO, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_parse_specs():
  assert init_from.parse("hf:/m/gpt2") == ("hf", "/m/gpt2", None)
  assert init_from.parse("runs/a") == ("workdir", "runs/a", None)
  assert init_from.parse("runs/a:400") == ("workdir", "runs/a", 400)
  assert init_from.parse("gs://b/run:400") == ("workdir", "gs://b/run", 400)
  assert init_from.parse("gs://b/run") == ("workdir", "gs://b/run", None)


def test_resize_vocab_appends_mean_rows():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  y = init_from.resize_vocab("embed", x, 6)
  assert y.shape == (6, 3) and np.array_equal(y[:4], x) and np.allclose(y[4:], x.mean(0))
  u = init_from.resize_vocab("unembed", x.T, 5)
  assert u.shape == (3, 5) and np.allclose(u[:, 4], x.mean(0))


def test_table1_preset_requires_a_source():
  config = _experiment("seqvcr_mult").get_config("gpt2_table1")
  assert config.train.batch_size == 32 and config.train.learning_rate == 5e-4
  assert config.train.num_steps == 40 * 808_000 // 32 and config.data.multiplication.num_digits == 4
  assert _experiment("seqvcr_mult").get_config("gpt2_table1_5x5").data.multiplication.num_digits == 5
  with pytest.raises(ValueError, match="--config.model.init_from=hf:/path/to/hf_folder"):
    train_lib.build(config)
