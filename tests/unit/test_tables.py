"""The layer-invariant tables (lime_jax/model/tables.py): built once from the positions, read by every
layer; a Block refuses raw positions and tables that lack what its config needs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model.block import Block
from lime_jax.model.tables import LayerTables, layer_tables
from tests.conftest import random_params, tiny_model_config


def test_tables_follow_the_config():
  packed_BT = jnp.asarray([[0, 1, 2, 0, 1, 2]])  # two documents of 3 tokens
  rope = layer_tables(tiny_model_config(), packed_BT)
  assert rope.cos_BT1H.shape == (1, 6, 1, 8) and rope.mask_B1TT is None
  np.testing.assert_allclose(rope.cos_BT1H[0, :, 0, 0], np.cos(np.asarray([0, 1, 2, 0, 1, 2])), rtol=1e-6)
  docs = layer_tables(tiny_model_config(document_mask=True), packed_BT).mask_B1TT[0, 0]
  # Literal: query t sees key s when both lie in the same document and s <= t.
  doc = np.asarray([0, 0, 0, 1, 1, 1])
  expected = (doc[:, None] == doc[None, :]) & (np.arange(6)[None, :] <= np.arange(6)[:, None])
  np.testing.assert_array_equal(np.asarray(docs), expected)
  assert layer_tables(tiny_model_config(document_mask=True), packed_BT, decoding=True).mask_B1TT is None
  windows = tiny_model_config(sliding_window=2, global_layers=(1,))
  np.testing.assert_array_equal(
    np.asarray(layer_tables(windows, jnp.arange(4)[None]).mask_B1TT[0, 0]), np.tril(np.ones((4, 4), bool))
  )
  learned = layer_tables(tiny_model_config(position="learned", max_positions=8), packed_BT)
  assert learned.cos_BT1H is None and learned.sin_BT1H is None


def _layer0(cfg):
  return jax.tree.map(lambda x: x[0], random_params(cfg)["layers"])


def test_block_refuses_positions_and_incomplete_tables():
  cfg = tiny_model_config()
  h_BTD, positions_BT = jnp.zeros((1, 4, cfg.d_model)), jnp.arange(4)[None]
  with pytest.raises(TypeError, match="layer_tables"):
    Block(cfg).apply({"params": _layer0(cfg)}, h_BTD, positions_BT)
  with pytest.raises(ValueError, match="RoPE tables"):
    Block(cfg).apply({"params": _layer0(cfg)}, h_BTD, LayerTables(positions_BT))
  windows = tiny_model_config(sliding_window=2, global_layers=(1,))
  no_mask = layer_tables(tiny_model_config(), positions_BT)
  with pytest.raises(ValueError, match="global_layers"):
    Block(windows).apply({"params": _layer0(windows)}, h_BTD, no_mask, layer=jnp.int32(0))


def test_local_rope_tables_only_with_rope_local_theta():
  """The sliding layers' RoPE pair (Gemma 3) exists only with rope_local_theta, also when decoding; a
  Block of such a config refuses tables without it."""
  positions_BT = jnp.arange(6)[None]
  windows = tiny_model_config(sliding_window=2, global_layers=(1,))
  assert layer_tables(windows, positions_BT).local_cos_BT1H is None
  local = tiny_model_config(sliding_window=2, global_layers=(1,), rope_local_theta=100.0)
  for decoding in (False, True):
    tables = layer_tables(local, positions_BT, decoding=decoding)
    assert tables.local_cos_BT1H.shape == tables.cos_BT1H.shape == (1, 6, 1, 8)
    angles = np.arange(6) * 100.0 ** (-2 / 8)  # channel 1: frequency theta^(-2/H)
    np.testing.assert_allclose(tables.local_sin_BT1H[0, :, 0, 1], np.sin(angles), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tables.cos_BT1H[0, :, 0, 1], np.cos(np.arange(6) * 1e4 ** (-2 / 8)), rtol=1e-5)
  h_BTD = jnp.zeros((1, 6, local.d_model))
  with pytest.raises(ValueError, match="rope_local_theta"):
    Block(local).apply(
      {"params": _layer0(local)}, h_BTD, layer_tables(windows, positions_BT), layer=jnp.int32(0)
    )
