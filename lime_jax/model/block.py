"""One pre-norm decoder layer: h += Attn(Norm(h)); h += MLP(Norm(h)).

The default is LLaMA's (RMSNorm, RoPE, SwiGLU, no biases); the options of `ModelConfig` cover the
pretrained families of lime_jax/hf/ (biases, q/k norms, LayerNorm, GeGLU / GELU MLPs, learned positions,
sliding windows, logit soft-capping, Gemma 2's post-norms, Gemma 3's per-layer RoPE base). Each option
adds work only when on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lime_jax.model import attention, taps
from lime_jax.model.dense import dense
from lime_jax.model.layers import Mlp, apply_rope, make_norm, normal_init, rms_norm
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.tables import LayerTables
from lime_jax.runtime import sharding

# A kv mixer maps this layer's raw (pre-RoPE) keys/values [B, T, R, 2H] to the ones attention uses.
# The plain backbone uses them unchanged; LIMe's kv router mixes in earlier layers'
# (lime_jax/model/routers/kv.py), value residual the first layer's values (value_residual.py).
KvMixer = Callable[[jax.Array], jax.Array]
# A kv input maps this layer's normed input x [B, T, D] to one input per kv head [B, T, R, D] that the
# k/v projection reads (LIMe's v1 routers, lime_jax/model/routers/v1.py, route earlier layers' hidden
# states this way). Default: x for all.
KvInput = Callable[[jax.Array], jax.Array]


def project_kv(cfg: ModelConfig, x_BTD: jax.Array, params_l: Any) -> jax.Array:
  """The raw (pre-RoPE) keys/values [B, T, R, 2H] of the normed input: the Block's kv projection
  (LIMe's kv router, lime_jax/model/routers/kv.py `_entry`, computes it outside the Block from the same
  parameters).

  `x_BTD` is [B, T, D], or one input per kv head [B, T, R, D] (the `kv_input` hook). `params_l`: the
  layer's parameters; reads wkv, and bkv (`qkv_bias`) and k_norm (`qk_norm`, on the keys) when on.
  """
  wkv_DRC = params_l["wkv"].astype(cfg.dtype)
  if x_BTD.ndim == 3:
    # An einsum, not `dense`: LIMe's kv router differentiates this projection through its stored buffer
    # slot (routers/kv.py `_stored`), and under remat 'full' the dense form made its 64-layer step
    # 1.11-1.12x the FLOP ratio against 1.04 (docs/benchmarks.md, "Where a train step's time goes").
    kv_BTRC = jnp.einsum("btd,drc->btrc", x_BTD, wkv_DRC)
  else:
    kv_BTRC = jnp.einsum("btrd,drc->btrc", x_BTD, wkv_DRC)
  if cfg.qkv_bias:
    kv_BTRC = kv_BTRC + params_l["bkv"].astype(cfg.dtype)[None, None]
  if cfg.qk_norm:
    H = cfg.head_dim
    k_BTRH = rms_norm(kv_BTRC[..., :H], params_l["k_norm"], cfg.rms_eps, cfg.norm_offset)
    kv_BTRC = jnp.concatenate([k_BTRH, kv_BTRC[..., H:]], axis=-1)
  return kv_BTRC


def _is_global(cfg: ModelConfig, layer: jax.Array | None) -> jax.Array:
  """Whether layer `layer` is one of `cfg.global_layers` (a traced bool; `cfg.global_layers` non-empty)."""
  if layer is None:
    raise ValueError(
      f"config.model.global_layers={cfg.global_layers} needs the layer index in the Block; "
      f"topology {cfg.topology!r} does not pass it: use topology 'plain'."
    )
  return jnp.isin(layer, jnp.asarray(cfg.global_layers, jnp.int32))


def layer_window(cfg: ModelConfig, layer: jax.Array | None) -> Any:
  """Layer `layer`'s sliding window: 0 (off), the static `cfg.sliding_window`, or (with `global_layers`)
  a traced scalar, huge for the global layers."""
  if not cfg.sliding_window:
    return 0
  if not cfg.global_layers:
    return cfg.sliding_window
  return jnp.where(_is_global(cfg, layer), jnp.iinfo(jnp.int32).max, cfg.sliding_window)


def layer_rope(cfg: ModelConfig, tables: LayerTables, layer: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Layer `layer`'s RoPE cos / sin [B, T, 1, H]: the tables' global pair, or (`rope_local_theta`) the
  local pair on the sliding-window layers, selected by the (traced) layer index with `global_layers`."""
  if tables.cos_BT1H is None:
    raise ValueError("config.model.position='rope' needs RoPE tables: build them with layer_tables(cfg).")
  if not cfg.rope_local_theta or not cfg.sliding_window:
    return tables.cos_BT1H, tables.sin_BT1H
  if tables.local_cos_BT1H is None:
    raise ValueError(
      f"config.model.rope_local_theta={cfg.rope_local_theta} needs the local RoPE tables: build them with "
      "layer_tables(cfg, positions_BT) for this cfg."
    )
  if not cfg.global_layers:  # every layer slides
    return tables.local_cos_BT1H, tables.local_sin_BT1H
  is_global = _is_global(cfg, layer)
  return (
    jnp.where(is_global, tables.cos_BT1H, tables.local_cos_BT1H),
    jnp.where(is_global, tables.sin_BT1H, tables.local_sin_BT1H),
  )


class Residual(NamedTuple):
  """How a sub-layer ('attn' or 'mlp') reads and writes the residual state (Hyper-Connections keep n
  streams, lime_jax/model/hyper_connections.py). read(name, state) -> (h [B, T, D] the sub-layer
  normalises, ctx); write(name, state, ctx, out [B, T, D]) -> new state. Default: state = h; h + out."""

  read: Callable[[str, Any], tuple[jax.Array, Any]]
  write: Callable[[str, Any, Any, jax.Array], Any]


PLAIN_RESIDUAL = Residual(
  read=lambda name, h_BTD: (h_BTD, None),
  write=lambda name, h_BTD, ctx, out_BTD: h_BTD + out_BTD.astype(h_BTD.dtype),
)


class Block(nn.Module):
  """Decoder layer. Returns the new residual stream and this layer's raw k/v.

  The first argument is the residual state: h [B, T, D], or what a `residual` hook keeps (n streams);
  the second the layer-invariant `LayerTables` (positions, RoPE, mask: lime_jax/model/tables.py), which
  the caller builds once for all layers.

  Parameters: attn_norm, wq [D, N, H], wkv [D, R, 2H] (k then v per kv head), wo [N, H, D], mlp_norm,
  mlp (lime_jax/model/layers.py Mlp); with the options: bq [N, H] and bkv [R, 2H] (`qkv_bias`), bo [D]
  (`out_bias`), q_norm / k_norm [H] (`qk_norm`), attn_post_norm / mlp_post_norm (`post_norms`). `cache`
  (decoding) holds the keys/values attention used, RoPE'd, [B, S, R, H] each. `layer` (the layer index)
  is needed only for per-layer sliding windows and RoPE bases (`global_layers`, `rope_local_theta`).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self,
    h_BTD: jax.Array,
    tables: LayerTables,
    kv_mixer: KvMixer | None = None,
    kv_input: KvInput | None = None,
    cache: dict | None = None,
    residual: Residual = PLAIN_RESIDUAL,
    layer: jax.Array | None = None,
  ) -> tuple[Any, dict]:
    cfg = self.cfg
    if not isinstance(tables, LayerTables):
      raise TypeError(
        f"Block's second argument must be LayerTables, got {type(tables).__name__}: build them once with "
        "lime_jax.model.tables.layer_tables(cfg, positions_BT)."
      )
    positions_BT = tables.positions_BT
    plain = residual is PLAIN_RESIDUAL
    if not plain and taps.edited("hidden"):
      raise ValueError("Edits of 'hidden' need the plain residual stream; edit 'resid_pre' instead.")
    state = taps.point("resid_pre", h_BTD, layer) if plain else h_BTD
    h_BTD, ctx = residual.read("attn", state)
    resid_pre_BTD = h_BTD if plain else taps.point("resid_pre", h_BTD, layer)
    h_BTD = resid_pre_BTD
    D, N, R, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init, zeros, ones = normal_init(cfg.init_std), nn.initializers.zeros, nn.initializers.ones
    wq_DNH = self.param("wq", init, (D, N, H), cfg.pdtype)
    kv_params = {"wkv": self.param("wkv", init, (D, R, 2 * H), cfg.pdtype)}
    wo_NHD = self.param("wo", init, (N, H, D), cfg.pdtype)

    x_BTD = make_norm(cfg, "attn_norm")(h_BTD).astype(cfg.dtype)
    q_BTNH = dense(x_BTD, wq_DNH.astype(cfg.dtype))
    if cfg.qkv_bias:
      q_BTNH = q_BTNH + self.param("bq", zeros, (N, H), cfg.pdtype).astype(cfg.dtype)[None, None]
      kv_params["bkv"] = self.param("bkv", zeros, (R, 2 * H), cfg.pdtype)
    if cfg.qk_norm:
      norm_init = zeros if cfg.norm_offset else ones
      q_norm_H = self.param("q_norm", norm_init, (H,), cfg.pdtype)
      q_BTNH = rms_norm(q_BTNH, q_norm_H, cfg.rms_eps, cfg.norm_offset)
      kv_params["k_norm"] = self.param("k_norm", norm_init, (H,), cfg.pdtype)
    kv_x = x_BTD if kv_input is None else kv_input(x_BTD).astype(cfg.dtype)
    raw_kv_BTRC = taps.point("raw_kv", project_kv(cfg, kv_x, kv_params), layer)
    kv_BTRC = raw_kv_BTRC if kv_mixer is None else kv_mixer(raw_kv_BTRC).astype(cfg.dtype)
    kv_BTRC = taps.point("mixed_kv", kv_BTRC, layer)
    q_BTNH = sharding.constrain(q_BTNH, ("batch", "length", "heads", "kv"))  # no-ops outside a mesh
    kv_BTRC = sharding.constrain(kv_BTRC, ("batch", "length", "kv_heads", "kv"))
    k_BTRH, v_BTRH = kv_BTRC[..., :H], kv_BTRC[..., H:]

    if cfg.position == "rope":
      cos_BT1H, sin_BT1H = layer_rope(cfg, tables, layer)
      q_BTNH = apply_rope(q_BTNH, cos_BT1H, sin_BT1H)
      k_BTRH = apply_rope(k_BTRH, cos_BT1H, sin_BT1H)
    q_BTNH = taps.point("q", q_BTNH, layer)
    k_BTRH = taps.point("k", k_BTRH, layer)
    v_BTRH = taps.point("value", v_BTRH, layer)

    window = layer_window(cfg, layer)
    new_cache, mask_B1TS = None, None
    if cache is not None:
      # k / value collected from here on are what attention reads: with a cache, every slot [B, S, ...].
      k_BTRH, v_BTRH, new_cache, mask_B1TS = _update_cache(cache, k_BTRH, v_BTRH, positions_BT, window)
    elif tables.mask_B1TT is not None:  # packed documents, or per-layer windows (added here)
      mask_B1TS = tables.mask_B1TT
      if not isinstance(window, int) or window:
        mask_B1TS = mask_B1TS & attention.window_mask(positions_BT, positions_BT, window)
    elif not isinstance(window, int):
      raise ValueError(
        "Per-layer sliding windows (config.model.global_layers) need the causal mask in the tables: "
        "build them with layer_tables(cfg, positions_BT) for this cfg."
      )
    scale = cfg.attn_scale_dim**-0.5 if cfg.attn_scale_dim else None
    out_BTNH, probs_BNTS = attention.attend(
      q_BTNH,
      k_BTRH,
      v_BTRH,
      cfg.attention_impl,
      mask_B1TS,
      scale=scale,
      softcap=cfg.attn_logit_softcap,
      window=window if isinstance(window, int) and mask_B1TS is None else 0,
      recompute_probs=cfg.remat_policy == "none",
    )
    attn_out_BTD = dense(out_BTNH, wo_NHD.astype(cfg.dtype), in_dims=2)
    if cfg.out_bias:
      attn_out_BTD = attn_out_BTD + self.param("bo", zeros, (D,), cfg.pdtype).astype(cfg.dtype)[None, None]
    if cfg.post_norms:
      attn_out_BTD = make_norm(cfg, "attn_post_norm")(attn_out_BTD)
    attn_out_BTD = taps.point("attn_out", attn_out_BTD, layer)
    state = residual.write("attn", state, ctx, attn_out_BTD)

    if plain:
      state = taps.point("resid_mid", state, layer)
    h_BTD, ctx = residual.read("mlp", state)
    resid_mid_BTD = h_BTD if plain else taps.point("resid_mid", h_BTD, layer)
    y_BTD = make_norm(cfg, "mlp_norm")(resid_mid_BTD)
    mlp_out_BTD = Mlp(cfg, name="mlp")(y_BTD)
    if cfg.post_norms:
      mlp_out_BTD = make_norm(cfg, "mlp_post_norm")(mlp_out_BTD)
    mlp_out_BTD = taps.point("mlp_out", mlp_out_BTD, layer)
    state = residual.write("mlp", state, ctx, mlp_out_BTD)
    if plain:
      state = taps.point("hidden", state, layer)
    # Everything a caller may collect (lime_jax/model/taps.py POINTS; the stacks pick what is asked,
    # the rest is dead code to XLA), and the decoding cache.
    extras = {
      "resid_pre": resid_pre_BTD,
      "q": q_BTNH,
      "raw_kv": raw_kv_BTRC,
      "mixed_kv": kv_BTRC,
      "k": k_BTRH,
      "value": v_BTRH,
      "attn_probs": probs_BNTS,
      "attn_out": attn_out_BTD,
      "resid_mid": resid_mid_BTD,
      "mlp_out": mlp_out_BTD,
      "cache": new_cache,
    }
    return state, extras


def _update_cache(
  cache: dict, k_BTRH: jax.Array, v_BTRH: jax.Array, positions_BT: jax.Array, window: Any = 0
):
  """Writes the new keys/values at `cache['index']` and returns what attention reads; keys outside a
  sliding `window` (> 0) are masked. Slot s holds position s, or with `cache['pos']` [B, S] (rows at
  different positions, `init_cache(slot_positions=True)`) the position written there, which the causal
  mask compares: a slot whose position is above every query's is never seen."""
  index = cache["index"]
  k_BSRH = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BTRH.astype(cache["k"].dtype), index, 1)
  v_BSRH = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BTRH.astype(cache["v"].dtype), index, 1)
  B, S = k_BSRH.shape[:2]
  new_cache = {"k": k_BSRH, "v": v_BSRH, "index": index + k_BTRH.shape[1]}
  slots_BS = jnp.broadcast_to(jnp.arange(S), (B, S))
  slot_positions_BS = slots_BS
  if "pos" in cache:
    slot_positions_BS = jax.lax.dynamic_update_slice_in_dim(
      cache["pos"], positions_BT.astype(cache["pos"].dtype), index, 1
    )
    new_cache["pos"] = slot_positions_BS
  filled_BS = slots_BS < index + k_BTRH.shape[1]
  mask_B1TS = attention.causal_mask(positions_BT, slot_positions_BS) & filled_BS[:, None, None, :]
  if not isinstance(window, int) or window:
    mask_B1TS = mask_B1TS & attention.window_mask(positions_BT, slot_positions_BS, window)
  return k_BSRH.astype(k_BTRH.dtype), v_BSRH.astype(v_BTRH.dtype), new_cache, mask_B1TS
