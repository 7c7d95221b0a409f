"""One pre-norm LLaMA decoder layer: h += Attn(RMSNorm(h)); h += SwiGLU(RMSNorm(h))."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lime_jax import sharding
from lime_jax.model import attention
from lime_jax.model.layers import RMSNorm, SwiGLU, apply_rope, normal_init, rope_angles
from lime_jax.model.model_config import ModelConfig

# A kv mixer maps this layer's raw (pre-RoPE) keys/values [B, T, R, 2H] to the ones attention uses.
# The plain backbone uses them unchanged; LIMe mixes in earlier layers' (lime_jax/model/lime.py).
KvMixer = Callable[[jax.Array], jax.Array]
# A kv input maps this layer's normed input x [B, T, D] to one input per kv head [B, T, R, D] that the
# k/v projection reads (LIMe v1 routes hidden states of earlier layers this way). Default: x for all.
KvInput = Callable[[jax.Array], jax.Array]


def project_kv(cfg: ModelConfig, x_BTD: jax.Array, wkv_DRC: jax.Array) -> jax.Array:
  """The raw (pre-RoPE) keys/values [B, T, R, 2H] of the normed input: the Block's kv projection
  (lime_jax/model/lime.py recomputes it outside the Block from the same parameters)."""
  return jnp.einsum("btd,drc->btrc", x_BTD, wkv_DRC.astype(cfg.dtype))


class Residual(NamedTuple):
  """How a sub-layer ('attn' or 'mlp') reads and writes the residual state (Hyper-Connections keep n
  streams, lime_jax/model/hyper_connections.py). read(name, state) -> (h [B, T, D] the sub-layer
  normalises, ctx); write(name, state, ctx, out [B, T, D]) -> new state. Default: state = h; h + out."""

  read: Callable[[str, Any], tuple[jax.Array, Any]]
  write: Callable[[str, Any, Any, jax.Array], Any]


PLAIN_RESIDUAL = Residual(read=lambda name, h_BTD: (h_BTD, None),
                          write=lambda name, h_BTD, ctx, out_BTD: h_BTD + out_BTD.astype(h_BTD.dtype))


class Block(nn.Module):
  """Decoder layer. Returns the new residual stream and this layer's raw k/v.

  The first argument is the residual state: h [B, T, D], or what a `residual` hook keeps (n streams).

  Parameters: attn_norm, wq [D, N, H], wkv [D, R, 2H] (k then v per kv head), wo [N, H, D], mlp_norm,
  mlp (SwiGLU). `cache` (decoding) holds the keys/values attention used, RoPE'd, [B, S, R, H] each.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, h_BTD: jax.Array, positions_BT: jax.Array, kv_mixer: KvMixer | None = None,
               kv_input: KvInput | None = None, cache: dict | None = None,
               residual: Residual = PLAIN_RESIDUAL) -> tuple[Any, dict]:
    cfg = self.cfg
    state, (h_BTD, ctx) = h_BTD, residual.read("attn", h_BTD)
    D, N, R, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = normal_init(cfg.init_std)
    wq_DNH = self.param("wq", init, (D, N, H), cfg.pdtype)
    wkv_DRC = self.param("wkv", init, (D, R, 2 * H), cfg.pdtype)
    wo_NHD = self.param("wo", init, (N, H, D), cfg.pdtype)

    x_BTD = RMSNorm(cfg.rms_eps, cfg.pdtype, name="attn_norm")(h_BTD).astype(cfg.dtype)
    q_BTNH = jnp.einsum("btd,dnh->btnh", x_BTD, wq_DNH.astype(cfg.dtype))
    if kv_input is None:
      raw_kv_BTRC = project_kv(cfg, x_BTD, wkv_DRC)
    else:
      x_BTRD = kv_input(x_BTD).astype(cfg.dtype)
      raw_kv_BTRC = jnp.einsum("btrd,drc->btrc", x_BTRD, wkv_DRC.astype(cfg.dtype))
    kv_BTRC = raw_kv_BTRC if kv_mixer is None else kv_mixer(raw_kv_BTRC).astype(cfg.dtype)
    q_BTNH = sharding.constrain(q_BTNH, ("batch", "length", "heads", "kv"))  # no-ops outside a mesh
    kv_BTRC = sharding.constrain(kv_BTRC, ("batch", "length", "kv_heads", "kv"))
    k_BTRH, v_BTRH = kv_BTRC[..., :H], kv_BTRC[..., H:]

    cos_BTH, sin_BTH = rope_angles(positions_BT, H, cfg.rope_theta)
    q_BTNH = apply_rope(q_BTNH, cos_BTH, sin_BTH)
    k_BTRH = apply_rope(k_BTRH, cos_BTH, sin_BTH)

    new_cache, mask_B1TS = None, None
    if cache is not None:
      k_BTRH, v_BTRH, new_cache, mask_B1TS = _update_cache(cache, k_BTRH, v_BTRH, positions_BT)
    out_BTNH, probs_BNTS = attention.attend(q_BTNH, k_BTRH, v_BTRH, cfg.attention_impl, mask_B1TS)
    attn_out_BTD = jnp.einsum("btnh,nhd->btd", out_BTNH, wo_NHD.astype(cfg.dtype))
    state = residual.write("attn", state, ctx, attn_out_BTD)

    h_BTD, ctx = residual.read("mlp", state)
    y_BTD = RMSNorm(cfg.rms_eps, cfg.pdtype, name="mlp_norm")(h_BTD)
    mlp = SwiGLU(D, cfg.ffn_dim, cfg.init_std, cfg.dtype, cfg.pdtype, name="mlp")
    state = residual.write("mlp", state, ctx, mlp(y_BTD))
    extras = {"raw_kv": raw_kv_BTRC, "value": v_BTRH, "cache": new_cache, "attn_probs": probs_BNTS}
    return state, extras


def _update_cache(cache: dict, k_BTRH: jax.Array, v_BTRH: jax.Array, positions_BT: jax.Array):
  """Writes the new keys/values at `cache['index']` and returns what attention reads."""
  index = cache["index"]
  k_BSRH = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BTRH.astype(cache["k"].dtype), index, 1)
  v_BSRH = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BTRH.astype(cache["v"].dtype), index, 1)
  B, S = k_BSRH.shape[:2]
  slot_positions_BS = jnp.broadcast_to(jnp.arange(S), (B, S))
  filled_BS = slot_positions_BS < index + k_BTRH.shape[1]
  mask_B1TS = attention.causal_mask(positions_BT, slot_positions_BS) & filled_BS[:, None, None, :]
  new_cache = {"k": k_BSRH, "v": v_BSRH, "index": index + k_BTRH.shape[1]}
  return k_BSRH.astype(k_BTRH.dtype), v_BSRH.astype(v_BTRH.dtype), new_cache, mask_B1TS
