"""The layer-invariant inputs of every layer: positions, RoPE tables and the attention mask.

They depend on the positions only, so the Transformer builds them once per forward pass and every
layer reads them (`Block(cfg)(h, tables)`): a layer no longer rebuilds them, and a stack that scans
layers (lime_jax/model/lime_stack.py) sees them as shared inputs, which its backward pass has
without stacking them over layers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from lime_jax.model import attention
from lime_jax.model.layers import rope_angles, rope_scaling_params
from lime_jax.model.model_config import ModelConfig


class LayerTables(NamedTuple):
  """positions [B, T] (int); RoPE cos / sin [B, T, 1, H] (broadcast over heads; None without RoPE);
  mask [B, 1, T, T] (True: the query sees the key) where attention needs one beyond plain causal (packed
  documents, or per-layer sliding windows, whose window a layer adds itself), else None; local cos / sin
  [B, T, 1, H]: the sliding-window layers' RoPE (`rope_local_theta` > 0, Gemma 3; a layer picks its pair,
  lime_jax/model/block.py `layer_rope`), else None."""

  positions_BT: jax.Array
  cos_BT1H: jax.Array | None = None
  sin_BT1H: jax.Array | None = None
  mask_B1TT: jax.Array | None = None
  local_cos_BT1H: jax.Array | None = None
  local_sin_BT1H: jax.Array | None = None


def layer_tables(cfg: ModelConfig, positions_BT: jax.Array, decoding: bool = False) -> LayerTables:
  """The tables of `positions_BT` for `cfg`. `decoding` (a kv cache): no mask, since a layer masks its
  cache slots itself (lime_jax/model/block.py `_update_cache`)."""
  cos_BT1H = sin_BT1H = mask_B1TT = local_cos_BT1H = local_sin_BT1H = None
  if cfg.position == "rope":
    cos_BTH, sin_BTH = rope_angles(positions_BT, cfg.head_dim, cfg.rope_theta, rope_scaling_params(cfg))
    cos_BT1H, sin_BT1H = cos_BTH[:, :, None, :], sin_BTH[:, :, None, :]
    if cfg.rope_local_theta:  # the sliding layers' base, without the scaling (Gemma 3)
      local_cos_BTH, local_sin_BTH = rope_angles(positions_BT, cfg.head_dim, cfg.rope_local_theta)
      local_cos_BT1H, local_sin_BT1H = local_cos_BTH[:, :, None, :], local_sin_BTH[:, :, None, :]
  per_layer_window = bool(cfg.sliding_window) and bool(cfg.global_layers)
  if not decoding and (cfg.document_mask or per_layer_window):
    mask_B1TT = attention.causal_mask(positions_BT, positions_BT)
    if cfg.document_mask:  # causal within each document (positions restart at 0 per document)
      mask_B1TT = mask_B1TT & attention.document_mask(positions_BT)
  return LayerTables(positions_BT, cos_BT1H, sin_BT1H, mask_B1TT, local_cos_BT1H, local_sin_BT1H)
