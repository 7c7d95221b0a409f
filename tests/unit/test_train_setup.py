"""Training set-up without training: config errors before compiling, presets, optimizer groups and the
learning-rate schedule."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.train import loop as train_lib
from lime_jax.train import optimizer as opt_lib
from tests.helpers.runs import tiny_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("train.learning_rate", -1.0, r"config\.train\.learning_rate"),
    ("data.task", "nope", r"config\.data\.task"),
    ("model.num_heads", 3, r"config\.model\.d_model"),
  ],
)
def test_bad_config_fails_before_compiling(tmp_path, field, value, match):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    train_lib.build(config)


def test_unknown_preset_names_known_ones():
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  with pytest.raises(ValueError, match="known presets: default, paper, tiny"):
    baseline.get_config("nope")


def test_optimizer_groups_decay_and_router_lr():
  """No decay on norms/embeddings; the router group runs at router_lr_multiplier x lr."""
  params = {
    "embed": jnp.ones((4, 2)),
    "final_norm": {"scale": jnp.ones((2,))},
    "layers": {"wq": jnp.ones((2, 2))},
    "router": {"w": jnp.ones((2, 2))},
  }
  labels = opt_lib.param_groups(params)
  assert labels == {
    "embed": "no_decay",
    "final_norm": {"scale": "no_decay"},
    "layers": {"wq": "decay"},
    "router": {"w": "router"},
  }
  config = tiny_config(warmup_steps=0, grad_clip=0.0, weight_decay=0.5, router_lr_multiplier=10.0)
  config.train.learning_rate = 1e-2
  tx = opt_lib.make_optimizer(config.train, params)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["layers"]["wq"], -1e-2 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["embed"], 0.0)
  np.testing.assert_array_equal(updates["final_norm"]["scale"], 0.0)
  router_grads = {**grads, "router": {"w": jnp.ones((2, 2))}}
  updates, _ = tx.update(router_grads, tx.init(params), params)
  # Adam's first step moves by ~lr; the router's lr is 10x.
  np.testing.assert_allclose(updates["router"]["w"], -0.1 * np.ones((2, 2)), rtol=1e-4)


def test_lr_schedule_warmup_then_cosine():
  config = tiny_config(num_steps=110, warmup_steps=10, min_lr_ratio=0.1)
  config.train.learning_rate = 1.0
  schedule = opt_lib.lr_schedule(config.train)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 0.55, rtol=1e-5)  # halfway down the cosine
  np.testing.assert_allclose(float(schedule(110)), 0.1, rtol=1e-5)
