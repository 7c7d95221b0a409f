"""Over-squashing sensitivities: the embeddings argument. (Against the exact Jacobian and finite
differences: tests/integration/test_probes_forward.py.)"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import Transformer
from tests.conftest import random_params, tiny_model_config


@pytest.fixture(scope="module")
def model():
  cfg = tiny_model_config(num_kv_heads=2)
  return cfg, random_params(cfg, seed=1)


def test_embeddings_argument_matches_token_lookup(model):
  cfg, params = model
  tokens = jnp.asarray([[1, 20, 33, 40, 17]])
  a, _ = Transformer(cfg).apply({"params": params}, tokens)
  b, _ = Transformer(cfg).apply({"params": params}, tokens, embeddings_BTD=params["embed"][tokens])
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
