"""The 'kv' router (LIMe v2, the default): mixing raw keys/values across layers and heads.

Head r of layer l >= 1 uses [k~; v~]_{l,r} = sum_{m<=l} sum_h W_l[r, m, h] [k; v]_{m,h} (raw, pre-RoPE,
same token; keys and values share coefficients; no softmax). Layer 0 is unchanged. Parameters
`w_LRMR` [L, R, L, R] (layer, dest head, source layer, source head); entries with source layer > l (and
all of layer 0) are unused and masked by select, so NaN there is harmless. init='paper' draws the
earlier-layer weights U(+-sqrt(3 / ((l+1) R))) with the identity on the own layer; 'identity' starts at
the baseline (earlier layers 0).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.block import Block, project_kv
from lime_jax.model.layers import make_norm
from lime_jax.model.lime_stack import LayerFns, LayerOut
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.routers import base


@dataclasses.dataclass(frozen=True)
class AutoGroupRule:
  """How `lime.group_size=0` (auto) picks G, and the hardware it was decided on. Set G explicitly
  (`config.model.lime.group_size`) to override it, e.g. to re-decide it on an accelerator."""

  measured_on: str
  # The arrays in which the backward pass parks a group's partial sums (G slots, 2G under remat) may
  # take at most this fraction of the buffer.
  max_parked_fraction: float


AUTO_GROUP_RULE = AutoGroupRule(
  measured_on="2-core CPU, jax 0.10 (docs/benchmarks.md, one-process A/B)", max_parked_fraction=0.5
)


def _own_term(own_RH: jax.Array, x_HBTC: jax.Array) -> jax.Array:
  """sum_h own[r, h] x[h] -> [B, T, R, C], written as a dot batched over B. Its residual is x itself
  (the buffer slot, which the backward pass reads instead of saving it twice), and being batched,
  remat_policy='save_dots' recomputes it instead of saving one more buffer slot per layer."""
  own_BRH = jnp.broadcast_to(own_RH.astype(x_HBTC.dtype)[None], (x_HBTC.shape[1], *own_RH.shape))
  return jnp.einsum("brh,hbtc->btrc", own_BRH, x_HBTC, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _stored(computed: jax.Array, stored: jax.Array) -> jax.Array:
  """`stored`, differentiated as `computed` (the caller guarantees they are equal): the value comes
  from the buffer, the gradient flows into the computation that produced it."""
  del computed
  return stored


def _stored_fwd(computed, stored):
  del computed
  return stored, None


def _stored_bwd(_, g):
  return g, None


_stored.defvjp(_stored_fwd, _stored_bwd)


def _entry(cfg: ModelConfig, *, params_l, h: jax.Array) -> jax.Array:
  """The `entry` stage (`EntryFn`): layer l's raw k/v [R, B, T, 2H] on its own, the Block's attn_norm
  and kv projection of h [B, T, D]."""
  x_BTD = make_norm(cfg).apply({"params": params_l["attn_norm"]}, h).astype(cfg.dtype)
  return project_kv(cfg, x_BTD, params_l).transpose(2, 0, 1, 3)


def _post(cfg, *, params_l, router_l, coef, prev, h, tables, l, cache_l, entry=None) -> LayerOut:
  """The `post` stage (`PostFn`): the Block with k/v = prev (earlier layers) + W_l[:, l] own raw k/v;
  the entry is the raw k/v. coef [R, M, R], prev [R, B, T, 2H], h [B, T, D].

  The own term reads the entry itself, so the residual it needs is the buffer slot (not saved twice).
  `entry` given (the buffer slot, `_entry`'s value): the raw k/v take its value and the projection
  only its gradient, so a remat recomputation reads the slot instead of redoing the projection.
  """
  del router_l
  coef_RMR, prev_RBTC, h_BTD = coef, prev, h
  own_RR = jax.lax.dynamic_index_in_dim(coef_RMR, l, axis=1, keepdims=False)
  raw = {}

  def kv_mixer(raw_BTRC):
    raw["RBTC"] = raw_BTRC.transpose(2, 0, 1, 3)
    if entry is not None:
      raw["RBTC"] = _stored(raw["RBTC"], entry.astype(raw["RBTC"].dtype))
    return (prev_RBTC.transpose(1, 2, 0, 3) + _own_term(own_RR, raw["RBTC"])).astype(cfg.dtype)

  h_BTD, extras = Block(cfg).apply(
    {"params": params_l}, h_BTD, tables, kv_mixer=kv_mixer, cache=cache_l, layer=l
  )
  return LayerOut(h_BTD, raw["RBTC"], extras)


def check_group_size(group_size: int, block_size: int, num_layers: int) -> None:
  """The one check of `config.model.lime.group_size` (config.validate and the router both call it):
  0 (auto), 1 (off) or a multiple of the block size S = min(block_size, L) that divides L."""
  G, S, L = group_size, min(block_size, num_layers), num_layers
  if G < 0 or (G > 1 and (G % S or L % G)):
    raise ValueError(
      f"config.model.lime.group_size={G} is invalid: use 0 (auto), 1 (off) or a multiple "
      f"of block_size={S} that divides num_layers={L}."
    )


class KvRouter(base.Router):
  """The kv router (module docstring)."""

  name = "kv"

  def init_params(self, rng: jax.Array, cfg: ModelConfig) -> dict:
    lc, L, R = cfg.lime, cfg.num_layers, cfg.num_kv_heads
    l_L1, m_1M = base.layer_source_grid(L, L)
    bound_L1 = jnp.sqrt(3.0 / ((l_L1 + 1) * R))
    u_LRMR = jax.random.uniform(rng, (L, R, L, R), jnp.float32, -1.0, 1.0) * bound_L1[:, :, None, None]
    earlier_L1M1 = (m_1M < l_L1)[:, None, :, None]
    own_L1M1 = (m_1M == l_L1)[:, None, :, None]
    eye_1R1R = jnp.eye(R)[None, :, None, :]
    w_LRMR = jnp.where(earlier_L1M1 & (lc.init == "paper"), u_LRMR, 0.0)
    return {"w_LRMR": jnp.where(own_L1M1, eye_1R1R, w_LRMR).astype(cfg.pdtype)}

  def param_count(self, cfg: ModelConfig) -> int:
    """R^2 (L(L+1)/2 - 1), docs/methods.md §2.1."""
    return cfg.num_kv_heads**2 * base.source_pairs(cfg.num_layers)

  def routing_weights(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    """W_eff [L, R, L, R]: zero for source layers > l, the identity for layer 0."""
    l_L1, m_1M = base.layer_source_grid(cfg.num_layers, cfg.num_layers)
    w_LRMR = router_params["w_LRMR"]
    used_L1M1 = ((m_1M <= l_L1) & (l_L1 >= 1))[:, None, :, None]
    first_L1M1 = ((m_1M == l_L1) & (l_L1 == 0))[:, None, :, None]
    eye_1R1R = jnp.eye(w_LRMR.shape[1], dtype=w_LRMR.dtype)[None, :, None, :]
    return jnp.where(used_L1M1, w_LRMR, jnp.where(first_L1M1, eye_1R1R, jnp.zeros_like(w_LRMR)))

  def stacked(self, router_params: dict, cfg: ModelConfig, M: int) -> dict:
    return {"coef": base.pad_sources(self.routing_weights(router_params, cfg), 2, M)}

  def group_size(self, cfg: ModelConfig) -> int:
    """Layers per group of the two-level schedule (lime_mix.far_forward).

    A group's far sources (all slots below it) are mixed for its G layers at once, the near ones (inside
    the group) per layer: slot reads fall from ~L^2/2 to ~L^2/(2G) + L*G/2, least near G = sqrt(L).
    Explicit G (`lime.group_size` > 1) must be a multiple of the block size S dividing L; 1 is the
    per-layer schedule. Auto (0), `AUTO_GROUP_RULE` (decided on its `measured_on` hardware): the
    multiple of S dividing L closest to sqrt(L) from below (at least S), as long as the arrays in which
    the backward pass parks a group's partial sums (lime_stack._pull_bwd: G buffer slots, 2G under any
    remat policy but 'none', as those need prev again) take at most `max_parked_fraction` of the buffer;
    else, and when S does not divide L, the per-layer schedule. Under remat, `lime.keep_far` (default)
    then swaps the second G slots for the L - G far parts the forward pass keeps: G + (L - G) slots,
    one buffer, the size of the cotangent that needs no memory of its own (it shares the buffer)."""
    S, _ = base.num_slots(cfg)
    L, G = cfg.num_layers, cfg.lime.group_size
    check_group_size(G, S, L)
    if G >= 1:
      return G
    options = [g for g in range(S, L + 1, S) if L % g == 0]
    if not options:
      return 1
    below = [g for g in options if g <= max(S, math.isqrt(L))]
    G = max(below) if below else min(options)
    parked_slots = G if cfg.remat_policy == "none" else 2 * G
    return G if parked_slots <= AUTO_GROUP_RULE.max_parked_fraction * L else 1

  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    R, H = cfg.num_kv_heads, cfg.head_dim
    return LayerFns(
      pre=base.static_coef_pre,
      mix=base.matrix_mix,
      post=functools.partial(_post, cfg),
      entry_shape=lambda *, batch, seq: (R, batch, seq, 2 * H),
      coef_axis=1,
      static_coef=base.stacked_coef,
      group_size=self.group_size(cfg),
      keep_far=cfg.lime.keep_far,
      entry=functools.partial(_entry, cfg),
      **base.common_fns(cfg),
    )

  def mixing_flops_per_token(self, cfg: ModelConfig) -> float:
    """4 * D_kv * R * (l+1) at every layer l >= 1 (docs/methods.md §2.4: R outputs of 2H values, each a sum
    over
    (l+1)R sources)."""
    R, H = cfg.num_kv_heads, cfg.head_dim
    return float(4 * R * H * R * base.source_pairs(cfg.num_layers))

  def analysis(self, params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None) -> dict[str, Any]:
    """Matrices W_l [R, (l+1)R]; signed and unnormalised, so shares are of |W_l| (analysis/router.py)."""
    del tokens_BT
    L, R = cfg.num_layers, cfg.num_kv_heads
    w_LRMR = np.asarray(self.routing_weights(params["router"], cfg), np.float64)
    mass_LRM = np.abs(w_LRMR).sum(axis=3)
    mass_LM = mass_LRM.sum(axis=1)
    return {
      "matrices": [w_LRMR[l, :, : l + 1, :].reshape(R, (l + 1) * R) for l in range(L)],
      "source_share": mass_LM / np.maximum(mass_LM.sum(axis=1, keepdims=True), 1e-30),
      "self_retrieval_per_head": np.stack(
        [mass_LRM[l, :, l] / np.maximum(mass_LRM[l].sum(axis=1), 1e-30) for l in range(L)]
      ),
    }


KV = KvRouter()
