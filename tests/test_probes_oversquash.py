"""Over-squashing sensitivities: Hutchinson vs the exact Jacobian, and causality."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import Transformer
from lime_jax.probes.oversquash import sensitivity
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


@pytest.mark.parametrize("target", ["hidden", "value"])
def test_exact_matches_finite_differences(model, target):
  """Independent check of the exact Jacobian norm: the full Jacobian by central differences (fp64 host)."""
  cfg, params = model
  tokens = np.array([1, 20, 33, 40])
  exact, err = sensitivity(params, cfg, tokens, target, method="exact")
  assert err is None and exact.shape == (4,)
  emb_TD = np.asarray(params["embed"])[tokens].astype(np.float64)
  T, D, h = len(tokens), cfg.d_model, 1e-2
  eye = np.eye(T * D).reshape(T * D, T, D)
  batch = np.concatenate([emb_TD + h * eye, emb_TD - h * eye]).astype(np.float32)  # [2TD, T, D]
  _, out = Transformer(cfg).apply(
    {"params": params},
    jnp.zeros((2 * T * D, T), jnp.int32),
    collect=(target,),
    embeddings_BTD=jnp.asarray(batch),
  )
  y = np.asarray(out.collected[target][-1][:, -1], np.float64).reshape(2 * T * D, -1)
  jac = ((y[: T * D] - y[T * D :]) / (2 * h)).reshape(T, D, -1)
  fd = np.sum(jac**2, axis=(1, 2))
  np.testing.assert_allclose(exact, fd, rtol=2e-2)


@pytest.mark.parametrize("target", ["hidden", "value"])
def test_hutchinson_matches_exact_within_statistical_error(model, target):
  cfg, params = model
  tokens = np.array([1, 20, 33, 40, 17, 25, 50, 18])
  exact, _ = sensitivity(params, cfg, tokens, target, method="exact")
  est, stderr = sensitivity(params, cfg, tokens, target, method="hutchinson", num_samples=512, seed=3)
  z = np.abs(est - exact) / stderr
  assert np.all(z < 4.5), z  # 8 positions x 2 targets: |z| < 4.5 fails by chance with p ~ 1e-4
  assert np.all(stderr < 0.25 * exact)  # and the error bar is informative


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_causal_model_has_zero_sensitivity_after_position(model, method):
  cfg, params = model
  tokens = np.array([1, 20, 33, 40, 17, 25])
  for position in (1, 3):
    sq, _ = sensitivity(params, cfg, tokens, "hidden", position=position, method=method, num_samples=16)
    assert np.all(sq[position + 1 :] == 0.0), sq
    assert np.all(sq[: position + 1] > 0.0), sq
