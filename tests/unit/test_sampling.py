"""Sampling filters: top-p, top-k and temperature. (Sampling with the KV cache:
tests/integration/test_decoding.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import decode


# -------------------------------------------------------------------------------------------- sampling
def test_top_p_keeps_the_smallest_set_with_mass_p():
  probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None]
  for p, keep in ((0.4, {1}), (0.6, {1, 3}), (0.8, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (1.0, set(range(5)))):
    out = np.asarray(decode.filter_logits(logits, 1.0, 0, p))[0]
    assert set(np.flatnonzero(np.isfinite(out))) == keep, p
  rng = np.random.default_rng(0)
  for _ in range(5):  # against a literal computation on random distributions
    x = rng.normal(size=(1, 40)).astype(np.float32) * 2
    p = float(rng.uniform(0.1, 0.95))
    probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    order, mass, keep = np.argsort(-probs[0]), 0.0, set()
    for i in order:
      if mass >= p:
        break
      keep.add(int(i))
      mass += probs[0, i]
    out = np.asarray(decode.filter_logits(jnp.asarray(x), 1.0, 0, p))[0]
    assert set(np.flatnonzero(np.isfinite(out))) == keep


def test_top_k_and_temperature():
  x = jnp.asarray([[0.1, 3.0, -1.0, 2.0, 0.5]])
  out = np.asarray(decode.filter_logits(x, 2.0, 2))[0]
  assert set(np.flatnonzero(np.isfinite(out))) == {1, 3}
  np.testing.assert_allclose(out[[1, 3]], [1.5, 1.0])  # divided by the temperature
  keys = jax.random.split(jax.random.key(0), 50)
  draws = [int(decode.sample_tokens(k, x, 5.0, 1)[0]) for k in keys]
  assert set(draws) == {1}  # top_k=1 is greedy at any temperature
  assert {int(decode.sample_tokens(k, x, 0.0)[0]) for k in keys} == {1}  # temperature 0 is greedy
  assert len({int(decode.sample_tokens(k, x, 5.0)[0]) for k in keys}) > 2  # high temperature spreads
