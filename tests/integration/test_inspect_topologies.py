"""lime_jax.inspect on every topology and LIMe router: cached activations equal the model's own forward;
LIMe edits with known answers (ablating a route, patching the routed keys / values). Plain-model edits and
the logit lens: tests/unit/test_inspect.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import inspect
from lime_jax.model.routers import NAMES as ROUTERS
from lime_jax.model.topologies import NAMES as TOPOLOGIES
from lime_jax.model.transformer import unembed
from tests.unit.test_inspect import B, L, T, close, forward_of, model_of, tokens_of

# Topologies whose layers read and write one residual stream (DenseFormer's next layer reads a weighted
# average, Hyper-Connections' a mix of streams).
ONE_STREAM = ("plain", "lime", "value_residual")
CASES = [(t, None) for t in TOPOLOGIES if t != "lime"] + [("lime", r) for r in ROUTERS]


@pytest.mark.parametrize("topology,router", CASES)
def test_cache_equals_theforward_of(topology, router):
  model = model_of(topology, router)
  tokens_BT = tokens_of()
  names = [n for n in inspect.POINTS if n != "router" or topology == "lime"] + list(inspect.FINAL_POINTS)
  logits_BTV, acts = inspect.run_with_cache(model, tokens_BT, names=names)
  assert close(logits_BTV, forward_of(model, tokens_BT))
  assert set(acts) == set(names)
  D, N, R, H = (model.cfg.d_model, model.cfg.num_heads, model.cfg.num_kv_heads, model.cfg.head_dim)
  assert acts["hidden"].shape == (L, B, T, D) and acts["q"].shape == (L, B, T, N, H)
  assert acts["raw_kv"].shape == (L, B, T, R, 2 * H) and acts["attn_probs"].shape == (L, B, N, T, T)
  assert acts["embed"].shape == (B, T, D) and acts["final_norm"].shape == (B, T, D)
  # The last layer's stream, read out, is the model's output; the probabilities are distributions.
  assert close(unembed(model.params, model.cfg, acts["hidden"][-1]), logits_BTV)
  assert close(jnp.sum(acts["attn_probs"], -1), 1.0)
  if topology in ONE_STREAM:
    assert close(acts["resid_pre"][0], acts["embed"])
    assert close(acts["resid_pre"][1:], acts["hidden"][:-1])
    assert close(acts["resid_mid"], acts["resid_pre"] + acts["attn_out"])
    assert close(acts["hidden"], acts["resid_mid"] + acts["mlp_out"])
  if topology == "plain":  # nothing mixes: what attention reads is the layer's own projection
    assert np.array_equal(acts["mixed_kv"], acts["raw_kv"])
    np.testing.assert_array_equal(acts["value"], acts["raw_kv"][..., H:])


def test_ablating_a_lime_route_equals_zeroing_its_router_weights():
  model = model_of("lime", "kv")
  tokens_BT = tokens_of()
  _, acts = inspect.run_with_cache(model, tokens_BT, names=("router",))
  mask_RMR = np.ones(acts["router"].shape[1:], np.float32)
  mask_RMR[:, 0, :] = 0.0  # layer 0's keys / values, as read by layers 1 and 2
  ablate = inspect.Edit("router", "scale", mask_RMR, layers=(1, 2))
  ablated, acts = inspect.run_with_cache(model, tokens_BT, names=("router",), edits=[ablate])
  assert not np.any(acts["router"][1:, :, 0, :])
  params = jax.tree.map(lambda x: x, model.params)
  params["router"]["w_LRMR"] = params["router"]["w_LRMR"].at[1:, :, 0, :].set(0.0)
  expected = forward_of(inspect.Model(model.cfg, params), tokens_BT)
  assert close(ablated, expected) and not close(ablated, forward_of(model, tokens_BT), 1e-3)


def test_patching_lime_needs_the_stream_and_the_routed_keys_values():
  model = model_of("lime", "kv")
  a_BT, b_BT = tokens_of(1), tokens_of(2)
  logits_a, cache_a = inspect.run_with_cache(model, a_BT, names=("hidden", "raw_kv"))
  stream = inspect.Edit("hidden", "replace", cache_a["hidden"], layers=(1,), per_layer=True)
  only_stream, _ = inspect.run_with_cache(model, b_BT, edits=[stream])
  assert not close(only_stream, logits_a, 1e-3)  # layer 2 still reads B's layer-0/1 keys and values
  routed = inspect.Edit("raw_kv", "replace", cache_a["raw_kv"], layers=(0, 1), per_layer=True)
  both, _ = inspect.run_with_cache(model, b_BT, edits=[stream, routed])
  assert close(both, logits_a)
