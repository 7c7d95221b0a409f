"""The v1 routers 'static', 'top_p' and 'dynamic': mixing normalised hidden states per kv head.

Head r of layer l >= 1 projects its k/v from x~_r = scale_l * sum_{m<=l} a_l[r, m] n(h_m), n = unit-RMS
normalisation, h_0 = embeddings, a = softmax. "Heads" are the kv heads R (one mixture per k/v
projection; R = N without GQA, as in the paper). static: a = softmax(w_l[r, :l+1]), w ~ N(0,
static_init_std^2). top_p: the same weights, keeping the largest until the mass before them exceeds p,
renormalised; the keep-mask is recomputed from the current weights on every forward pass (so every
training step) and carries no gradient. dynamic: a = softmax over m of Linear_l(D -> R(l+1)) of
scale_l * n(h_l), per token, init N(0, init_std^2) (as HF post_init gives every nn.Linear of the
reference). scale_l (`norm_scale_LD`, init 1) is the per-layer RMSNorm of the buffered states; layer 0
uses its own attn_norm, so it is a plain layer. init='identity' is not defined here (a softmax cannot
be exactly the identity).
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.block import Block
from lime_jax.model.lime_stack import LayerFns, LayerOut
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.routers import base
from lime_jax.model.transformer import Transformer


def unit_rms(h_BTD: jax.Array, eps: float) -> jax.Array:
  """n(h) = h / rms(h) in fp32 (RMSNorm without its scale)."""
  h32_BTD = h_BTD.astype(jnp.float32)
  return h32_BTD * jax.lax.rsqrt(jnp.mean(jnp.square(h32_BTD), axis=-1, keepdims=True) + eps)


def top_p_keep(a_xM: jax.Array, p: float) -> jax.Array:
  """Boolean mask keeping the largest weights until the mass before them exceeds p (>= 1 kept)."""
  order_xM = jnp.argsort(-a_xM, axis=-1, stable=True)
  sorted_xM = jnp.take_along_axis(a_xM, order_xM, axis=-1)
  before_xM = jnp.cumsum(sorted_xM, axis=-1) - sorted_xM
  before_xM = jnp.concatenate([jnp.zeros_like(before_xM[..., :1]), before_xM[..., 1:]], axis=-1)
  keep_sorted_xM = before_xM <= p
  return jnp.take_along_axis(keep_sorted_xM, jnp.argsort(order_xM, axis=-1), axis=-1)


def _live_sources(L: int) -> jax.Array:
  """[L, 1, L]: source m is live for layer l when m <= l."""
  l_L1, m_1M = base.layer_source_grid(L, L)
  return (m_1M <= l_L1)[:, None, :]


class V1Router(base.Router):
  """What the v1 routers share: the per-layer norm scales and the Block reading mixed hidden states."""

  def _check_init(self, cfg: ModelConfig) -> None:
    if cfg.lime.init != "paper":
      raise ValueError(
        f"config.model.lime.init={cfg.lime.init!r} is defined for router='kv' only; a "
        f"softmax router cannot be exactly the identity: use init='paper' with "
        f"router={self.name!r}."
      )

  @abc.abstractmethod
  def _weights_per_source(self, cfg: ModelConfig) -> int:
    """Router weights per (layer, source) pair, norm scales aside."""

  def param_count(self, cfg: ModelConfig) -> int:
    """weights per source x (L(L+1)/2 - 1) + (L-1) D norm scales."""
    return (
      self._weights_per_source(cfg) * base.source_pairs(cfg.num_layers) + (cfg.num_layers - 1) * cfg.d_model
    )

  def _prev_and_own(self, coef, prev, l):
    """(prev [B, T, R, D], own weight a_l[:, l] broadcastable to it) from the stage's layouts."""
    a_own_R = jax.lax.dynamic_index_in_dim(coef, l, axis=coef.ndim - 1, keepdims=False)
    return prev.transpose(1, 2, 0, 3), a_own_R[None, None, :, None]

  def _post(self, cfg, *, params_l, router_l, coef, prev, h, tables, l, cache_l, entry=None) -> LayerOut:
    """The `post` stage (`PostFn`): the Block with per-head k/v inputs scale_l * (prev + a_l[:, l]
    n(h_l)); the entry is n(h_l) (no `LayerFns.entry`, so `entry` is always None). h [B, T, D]."""
    del entry
    h_BTD = h
    n_BTD = unit_rms(h_BTD, cfg.rms_eps)
    prev_BTRD, a_own_BTR1 = self._prev_and_own(coef, prev, l)
    scale_D = jnp.where(l == 0, params_l["attn_norm"]["scale"], router_l["scale_D"]).astype(jnp.float32)

    def kv_input(x_BTD):
      del x_BTD
      mixed_BTRD = prev_BTRD + a_own_BTR1 * n_BTD[:, :, None, :]
      return (scale_D[None, None, None, :] * mixed_BTRD).astype(cfg.dtype)

    h_out_BTD, extras = Block(cfg).apply(
      {"params": params_l}, h_BTD, tables, kv_input=kv_input, cache=cache_l, layer=l
    )
    return LayerOut(h_out_BTD, n_BTD.astype(cfg.dtype), extras)

  def mixing_flops_per_token(self, cfg: ModelConfig) -> float:
    """2 * R * D * (l+1) per layer l >= 1 for the per-head mixtures."""
    return float(2 * cfg.num_kv_heads * cfg.d_model * base.source_pairs(cfg.num_layers))


class StaticRouter(V1Router):
  """'static': input-independent softmax weights a_l = softmax(w_l)."""

  name = "static"

  def init_params(self, rng: jax.Array, cfg: ModelConfig) -> dict:
    self._check_init(cfg)
    L, R = cfg.num_layers, cfg.num_kv_heads
    w_LRM = jax.random.normal(rng, (L, R, L), jnp.float32) * cfg.lime.static_init_std
    return {
      "w_LRM": jnp.where(_live_sources(L), w_LRM, 0.0).astype(cfg.pdtype),
      "norm_scale_LD": jnp.ones((L, cfg.d_model), cfg.pdtype),
    }

  def _weights_per_source(self, cfg: ModelConfig) -> int:
    return cfg.num_kv_heads

  def routing_weights(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    """a [L, R, L], softmax over m <= l."""
    return base.softmax_over_sources(router_params["w_LRM"], _live_sources(cfg.num_layers))

  def stacked(self, router_params: dict, cfg: ModelConfig, M: int) -> dict:
    return {
      "coef": base.pad_sources(self.routing_weights(router_params, cfg), 2, M),
      "scale_D": router_params["norm_scale_LD"],
    }

  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    D = cfg.d_model
    return LayerFns(
      pre=base.static_coef_pre,
      mix=base.matrix_mix,
      post=functools.partial(self._post, cfg),
      entry_shape=lambda *, batch, seq: (batch, seq, D),
      coef_axis=1,
      static_coef=base.stacked_coef_one_row,
      **base.common_fns(cfg),
    )

  def analysis(self, params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None) -> dict[str, Any]:
    del tokens_BT
    return base.softmax_summaries(np.asarray(self.routing_weights(params["router"], cfg), np.float64))


class TopPRouter(StaticRouter):
  """'top_p': the static weights pruned to their top-p mass and renormalised."""

  name = "top_p"

  def _keep(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    """The top-p keep-mask [L, R, L] of the current weights (no gradient)."""
    a_LRM = StaticRouter.routing_weights(self, router_params, cfg)
    return jax.lax.stop_gradient(top_p_keep(a_LRM, cfg.lime.top_p))

  def routing_weights(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    """a [L, R, L], softmax over the kept m <= l."""
    keep_LRM = self._keep(router_params, cfg)
    return base.softmax_over_sources(router_params["w_LRM"], _live_sources(cfg.num_layers) & keep_LRM)

  def analysis(self, params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None) -> dict[str, Any]:
    """Adds `pruned_per_layer` (fraction of each layer's weights removed; 0 for layer 0) and
    `pruned_fraction` (of the weights of layers >= 1)."""
    result = super().analysis(params, cfg, tokens_BT)
    L = cfg.num_layers
    keep_LRM = np.asarray(self._keep(params["router"], cfg) & _live_sources(L))
    pruned = [0.0] + [float(1.0 - keep_LRM[l, :, : l + 1].mean()) for l in range(1, L)]
    result["pruned_fraction"] = float(
      sum(p * (l + 1) for l, p in enumerate(pruned) if l) / sum(l + 1 for l in range(1, L))
    )
    result["pruned_per_layer"] = pruned
    return result


def _dynamic_pre(cfg: ModelConfig, *, router_l: dict, h: jax.Array, l) -> jax.Array:
  """The `pre` stage (`PreFn`): per-token routing weights coef [B, T, R, M] = softmax_m(Linear(scale_l *
  n(h_l))) over live sources m <= l."""
  x_BTD = router_l["scale_D"].astype(jnp.float32)[None, None, :] * unit_rms(h, cfg.rms_eps)
  logits_BTRM = jnp.einsum(
    "btd,drm->btrm",
    x_BTD.astype(cfg.dtype),
    router_l["w_DRM"].astype(cfg.dtype),
    preferred_element_type=jnp.float32,
  )
  live_111M = (jnp.arange(logits_BTRM.shape[-1]) <= l)[None, None, None, :]
  return base.softmax_over_sources(logits_BTRM, live_111M)


def _dynamic_mix(*, coef_block, buf_block, start, l):
  """The `mix` stage (`MixFn`): prev [B, T, R, D] = sum_s coef[b, t, r, s] buf[s, b, t] over the live
  slots start + s < l."""
  coef_BTRS, buf_SBTD = coef_block, buf_block
  live_111S = base.live(start, coef_BTRS.shape[-1], l)[None, None, None, :]
  coef_BTRS = jnp.where(live_111S, coef_BTRS, 0.0).astype(buf_SBTD.dtype)
  return jnp.einsum("btrs,sbtd->btrd", coef_BTRS, buf_SBTD, preferred_element_type=jnp.float32)


class DynamicRouter(V1Router):
  """'dynamic': per-token softmax weights from a Linear of the normalised hidden state."""

  name = "dynamic"
  input_dependent = True

  def init_params(self, rng: jax.Array, cfg: ModelConfig) -> dict:
    self._check_init(cfg)
    L, R, D = cfg.num_layers, cfg.num_kv_heads, cfg.d_model
    w_LDRM = jax.random.normal(rng, (L, D, R, L), jnp.float32) * cfg.init_std
    return {"w_LDRM": w_LDRM.astype(cfg.pdtype), "norm_scale_LD": jnp.ones((L, D), cfg.pdtype)}

  def _weights_per_source(self, cfg: ModelConfig) -> int:
    return cfg.d_model * cfg.num_kv_heads

  def routing_weights(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    raise ValueError("router='dynamic' has input-dependent weights; collect 'router' from the stack.")

  def stacked(self, router_params: dict, cfg: ModelConfig, M: int) -> dict:
    return {
      "w_DRM": base.pad_sources(router_params["w_LDRM"], 3, M),
      "scale_D": router_params["norm_scale_LD"],
    }

  def _prev_and_own(self, coef, prev, l):
    a_own_BTR = jax.lax.dynamic_index_in_dim(coef, l, axis=coef.ndim - 1, keepdims=False)
    return prev, a_own_BTR[..., None]

  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    D = cfg.d_model
    return LayerFns(
      pre=functools.partial(_dynamic_pre, cfg),
      mix=_dynamic_mix,
      post=functools.partial(self._post, cfg),
      entry_shape=lambda *, batch, seq: (batch, seq, D),
      coef_axis=3,
      **base.common_fns(cfg),
    )

  def mixing_flops_per_token(self, cfg: ModelConfig) -> float:
    """The mixtures' 2 R D (l+1) per layer plus the Linear's 2 D R (l+1)."""
    return 2.0 * super().mixing_flops_per_token(cfg)

  def analysis(self, params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None) -> dict[str, Any]:
    """Softmax summaries of the weights averaged over the tokens of `tokens_BT` (required)."""
    if tokens_BT is None:
      raise ValueError("router='dynamic' depends on the input: pass tokens_BT to average it over.")
    _, out = Transformer(cfg).apply({"params": params}, tokens_BT, collect=("router",))
    a_LRM = np.asarray(jnp.mean(out.collected["router"], axis=(1, 2)), np.float64)[:, :, : cfg.num_layers]
    return base.softmax_summaries(a_LRM)


STATIC = StaticRouter()
TOP_P = TopPRouter()
DYNAMIC = DynamicRouter()
