"""LIMe, Layer-Integrated Memory (SPEC §2): every router variant and the 'lime' topology.

Routers (`cfg.lime.router`):
  - 'kv' (v2, default): head r of layer l >= 1 uses
    [k~; v~]_{l,r} = sum_{m<=l} sum_h W_l[r, m, h] [k; v]_{m,h} (raw, pre-RoPE, same token; keys and values share coefficients; no softmax). Layer 0 is unchanged.
    Parameters `w_LRMR` [L, R, L, R] (layer, dest head, source layer, source head); entries with
    source layer > l (and all of layer 0) are unused and masked by select, so NaN there is harmless.
  - 'static' / 'top_p' / 'dynamic' (v1): head r of layer l >= 1 projects its k/v from
    x~_r = scale_l * sum_{m<=l} a_l[r, m] n(h_m), n = unit-RMS normalisation, h_0 = embeddings, a = softmax.
    "Heads" are the kv heads R (one mixture per k/v projection; R = N without GQA, as in the paper).
    static: a = softmax(w_l[r, :l+1]), w ~ N(0, static_init_std^2). top_p: the same weights, keeping the
    largest until the mass before them exceeds p, renormalised; the keep-mask is recomputed from the
    current weights on every forward pass (so every training step) and carries no gradient. dynamic:
    a = softmax over m of Linear_l(D -> R(l+1)) of scale_l * n(h_l), per token, init N(0, init_std^2)
    (as HF post_init gives every nn.Linear of the reference). scale_l (`norm_scale_LD`, init 1) is the
    per-layer RMSNorm of the buffered states; layer 0 uses its own attn_norm, so it is a plain layer.
    init='identity' is defined for 'kv' only (a softmax cannot be exactly the identity).

Each router is three stages per layer (pre / mix / post, see lime_vjp.py). Training runs them through
`lime_vjp.lime_stack` (custom VJP, memory linear in depth). Decoding with a cache, collections and the
'lime_scan' topology (the quadratic plain-scan reference of the benchmark) use `_scan_stack`.
Decoding only needs the new tokens' buffer: routing is at the same position and the cache holds the
mixed, RoPE'd keys/values, so the cache has the baseline's size.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from lime_jax.model.block import Block, project_kv
from lime_jax.model.layers import make_norm
from lime_jax.model.lime_vjp import LayerFns, buffer_scan, lime_stack
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput, Topology, pick_collected, register_topology

V1_ROUTERS = ("static", "top_p", "dynamic")
# Extra per-layer value the lime stacks can collect: the routing coefficients (coef of `_layer_fns`).
LIME_COLLECTABLE = ("router",)


# ---------------------------------------------------------------------------------------- parameters
def _layer_source_grid(L: int, M: int) -> tuple[jax.Array, jax.Array]:
  """Integer grids l [L, 1] and m [1, M] (layer, source slot)."""
  return jnp.arange(L)[:, None], jnp.arange(M)[None, :]


def init_router_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """The topology's parameters (stored by the Transformer under params['router'])."""
  lc, L, R, D = cfg.lime, cfg.num_layers, cfg.num_kv_heads, cfg.d_model
  l_L1, m_1M = _layer_source_grid(L, L)
  if lc.router == "kv":
    if lc.init not in ("paper", "identity"):
      raise ValueError(f"config.model.lime.init={lc.init!r} is unknown; use 'paper' or 'identity'.")
    bound_L1 = jnp.sqrt(3.0 / ((l_L1 + 1) * R))
    u_LRMR = jax.random.uniform(rng, (L, R, L, R), jnp.float32, -1.0, 1.0) * bound_L1[:, :, None, None]
    earlier_L1M1 = (m_1M < l_L1)[:, None, :, None]
    own_L1M1 = (m_1M == l_L1)[:, None, :, None]
    eye_1R1R = jnp.eye(R)[None, :, None, :]
    w_LRMR = jnp.where(earlier_L1M1 & (lc.init == "paper"), u_LRMR, 0.0)
    return {"w_LRMR": jnp.where(own_L1M1, eye_1R1R, w_LRMR).astype(cfg.pdtype)}
  if lc.router not in V1_ROUTERS:
    raise ValueError(f"config.model.lime.router={lc.router!r} is unknown; use 'kv' or one of {V1_ROUTERS}.")
  if lc.init != "paper":
    raise ValueError(f"config.model.lime.init={lc.init!r} is defined for router='kv' only; a softmax router "
                     f"cannot be exactly the identity: use init='paper' with router={lc.router!r}.")
  scale_LD = jnp.ones((L, D), cfg.pdtype)
  if lc.router == "dynamic":
    w_LDRM = jax.random.normal(rng, (L, D, R, L), jnp.float32) * cfg.init_std
    return {"w_LDRM": w_LDRM.astype(cfg.pdtype), "norm_scale_LD": scale_LD}
  w_LRM = jax.random.normal(rng, (L, R, L), jnp.float32) * lc.static_init_std
  used_L1M = (m_1M <= l_L1)[:, None, :]
  return {"w_LRM": jnp.where(used_L1M, w_LRM, 0.0).astype(cfg.pdtype), "norm_scale_LD": scale_LD}


def router_param_count(cfg: ModelConfig) -> int:
  """Router parameters that reach the output (padding and layer 0 excluded).

  kv: R^2 (L(L+1)/2 - 1), SPEC §2.1. static/top_p: R (L(L+1)/2 - 1) weights + (L-1) D norm scales.
  dynamic: D R (L(L+1)/2 - 1) + (L-1) D.
  """
  L, R, D = cfg.num_layers, cfg.num_kv_heads, cfg.d_model
  pairs = L * (L + 1) // 2 - 1
  if cfg.lime.router == "kv":
    return R * R * pairs
  per_source = R if cfg.lime.router in ("static", "top_p") else D * R
  return per_source * pairs + (L - 1) * D


def _softmax_over_sources(logits_xM: jax.Array, live_xM: jax.Array) -> jax.Array:
  """Softmax over the source axis restricted to live slots (select, so NaN in dead slots is harmless)."""
  return jax.nn.softmax(jnp.where(live_xM, logits_xM.astype(jnp.float32), -jnp.inf), axis=-1)


def top_p_keep(a_xM: jax.Array, p: float) -> jax.Array:
  """Boolean mask keeping the largest weights until the mass before them exceeds p (>= 1 kept)."""
  order_xM = jnp.argsort(-a_xM, axis=-1, stable=True)
  sorted_xM = jnp.take_along_axis(a_xM, order_xM, axis=-1)
  before_xM = jnp.cumsum(sorted_xM, axis=-1) - sorted_xM
  before_xM = jnp.concatenate([jnp.zeros_like(before_xM[..., :1]), before_xM[..., 1:]], axis=-1)
  keep_sorted_xM = before_xM <= p
  return jnp.take_along_axis(keep_sorted_xM, jnp.argsort(order_xM, axis=-1), axis=-1)


def routing_weights(router_params: dict, cfg: ModelConfig) -> jax.Array:
  """The static routing coefficients every layer uses, unpadded over sources (M = L).

  kv: W_eff [L, R, L, R], zero for source layers > l, identity for layer 0. static/top_p: a [L, R, L],
  softmax over m <= l (top_p pruned and renormalised). Not defined for 'dynamic' (input-dependent).
  """
  L = cfg.num_layers
  l_L1, m_1M = _layer_source_grid(L, L)
  if cfg.lime.router == "kv":
    w_LRMR = router_params["w_LRMR"]
    used_L1M1 = ((m_1M <= l_L1) & (l_L1 >= 1))[:, None, :, None]
    first_L1M1 = ((m_1M == l_L1) & (l_L1 == 0))[:, None, :, None]
    eye_1R1R = jnp.eye(w_LRMR.shape[1], dtype=w_LRMR.dtype)[None, :, None, :]
    return jnp.where(used_L1M1, w_LRMR, jnp.where(first_L1M1, eye_1R1R, jnp.zeros_like(w_LRMR)))
  if cfg.lime.router == "dynamic":
    raise ValueError("router='dynamic' has input-dependent weights; collect 'router' from the stack.")
  w_LRM = router_params["w_LRM"]
  live_L1M = (m_1M <= l_L1)[:, None, :]
  a_LRM = _softmax_over_sources(w_LRM, live_L1M)
  if cfg.lime.router == "top_p":
    keep_LRM = jax.lax.stop_gradient(top_p_keep(a_LRM, cfg.lime.top_p))
    a_LRM = _softmax_over_sources(w_LRM, live_L1M & keep_LRM)
  return a_LRM


def _pad_sources(x: jax.Array, axis: int, M: int) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, M - x.shape[axis])
  return jnp.pad(x, pad)


def _stacked_router(router_params: dict, cfg: ModelConfig, M: int) -> dict:
  """Per-layer router arrays (leading [L]) that the stack scans over, sources padded to M slots."""
  if cfg.lime.router == "dynamic":
    return {"w_DRM": _pad_sources(router_params["w_LDRM"], 3, M), "scale_D": router_params["norm_scale_LD"]}
  coef = _pad_sources(routing_weights(router_params, cfg), 2, M)
  if cfg.lime.router == "kv":
    return {"coef": coef}
  return {"coef": coef, "scale_D": router_params["norm_scale_LD"]}


# ------------------------------------------------------------------------------------------ stages
def unit_rms(h_BTD: jax.Array, eps: float) -> jax.Array:
  """n(h) = h / rms(h) in fp32 (RMSNorm without its scale)."""
  h32_BTD = h_BTD.astype(jnp.float32)
  return h32_BTD * jax.lax.rsqrt(jnp.mean(jnp.square(h32_BTD), axis=-1, keepdims=True) + eps)


def _live(start, S: int, l) -> jax.Array:
  """Which of the S source slots from `start` are earlier layers (< l)."""
  return start + jnp.arange(S) < l


def _live_coef(coef_blk: jax.Array, start, l) -> jax.Array:
  """coef with the source slots >= l of this block zeroed (select: NaN there is harmless)."""
  S = coef_blk.shape[1]
  live = _live(start, S, l).reshape((1, S) + (1,) * (coef_blk.ndim - 2))
  return jnp.where(live, coef_blk, jnp.zeros_like(coef_blk))


def _matrix_mix(coef_blk, buf_blk, start, l):
  """prev[r] = sum_k coef[r, k] buf[k] over one block: one [R, K] x [K, X] matmul (K = the block's
  source slots (x source heads), X = the slot's B*T*C values). kv: coef [R, S, R], buf [S, R, B, T, C];
  static: coef [R, S], buf [S, B, T, D]. Returns [R, *slot dims]."""
  R, K = coef_blk.shape[0], math.prod(coef_blk.shape[1:])
  coef_RK = _live_coef(coef_blk, start, l).reshape(R, K).astype(buf_blk.dtype)
  out_RX = jnp.dot(coef_RK, buf_blk.reshape(K, -1), preferred_element_type=jnp.float32)
  return out_RX.reshape((R,) + buf_blk.shape[coef_blk.ndim - 1:])


def _dynamic_mix(coef_BTRS, buf_SBTD, start, l):
  live_111S = _live(start, coef_BTRS.shape[-1], l)[None, None, None, :]
  coef_BTRS = jnp.where(live_111S, coef_BTRS, 0.0).astype(buf_SBTD.dtype)
  return jnp.einsum("btrs,sbtd->btrd", coef_BTRS, buf_SBTD, preferred_element_type=jnp.float32)


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


def _kv_entry(cfg, params_l, h_BTD: jax.Array) -> jax.Array:
  """Layer l's raw k/v [R, B, T, 2H] on its own: the Block's attn_norm and kv projection."""
  x_BTD = make_norm(cfg).apply({"params": params_l["attn_norm"]}, h_BTD).astype(cfg.dtype)
  return project_kv(cfg, x_BTD, params_l).transpose(2, 0, 1, 3)


def _kv_post(cfg, params_l, router_l, coef_RMR, prev_RBTC, h_BTD, positions_BT, l, cache_l, entry=None):
  """The Block with k/v = prev (earlier layers) + W_l[:, l] own raw k/v; the entry is the raw k/v.

  The own term reads the entry itself, so the residual it needs is the buffer slot (not saved twice).
  `entry` given (the buffer slot, `_kv_entry`'s value): the raw k/v take its value and the projection
  only its gradient, so a remat recomputation reads the slot instead of redoing the projection.
  """
  del router_l
  own_RR = jax.lax.dynamic_index_in_dim(coef_RMR, l, axis=1, keepdims=False)
  raw = {}

  def kv_mixer(raw_BTRC):
    raw["RBTC"] = raw_BTRC.transpose(2, 0, 1, 3)
    if entry is not None:
      raw["RBTC"] = _stored(raw["RBTC"], entry.astype(raw["RBTC"].dtype))
    return (prev_RBTC.transpose(1, 2, 0, 3) + _own_term(own_RR, raw["RBTC"])).astype(cfg.dtype)

  h_BTD, extras = Block(cfg).apply({"params": params_l}, h_BTD, positions_BT, kv_mixer=kv_mixer,
                                   cache=cache_l)
  return h_BTD, raw["RBTC"], extras


def _v1_post(cfg, params_l, router_l, coef, prev, h_BTD, positions_BT, l, cache_l):
  """The Block with per-head k/v inputs scale_l * (prev + a_l[:, l] n(h_l)); the entry is n(h_l)."""
  n_BTD = unit_rms(h_BTD, cfg.rms_eps)
  a_own = jax.lax.dynamic_index_in_dim(coef, l, axis=coef.ndim - 1, keepdims=False)
  if cfg.lime.router == "dynamic":
    prev_BTRD, a_own_BTR1 = prev, a_own[..., None]
  else:
    prev_BTRD, a_own_BTR1 = prev.transpose(1, 2, 0, 3), a_own[None, None, :, None]
  scale_D = jnp.where(l == 0, params_l["attn_norm"]["scale"], router_l["scale_D"]).astype(jnp.float32)

  def kv_input(x_BTD):
    del x_BTD
    mixed_BTRD = prev_BTRD + a_own_BTR1 * n_BTD[:, :, None, :]
    return (scale_D[None, None, None, :] * mixed_BTRD).astype(cfg.dtype)

  h_out_BTD, extras = Block(cfg).apply({"params": params_l}, h_BTD, positions_BT, kv_input=kv_input,
                                       cache=cache_l)
  return h_out_BTD, n_BTD.astype(cfg.dtype), extras


def _dynamic_pre(cfg, router_l, h_BTD, l):
  """Per-token routing weights softmax_m(Linear(scale_l * n(h_l))) over live sources m <= l."""
  x_BTD = (router_l["scale_D"].astype(jnp.float32)[None, None, :] * unit_rms(h_BTD, cfg.rms_eps))
  logits_BTRM = jnp.einsum("btd,drm->btrm", x_BTD.astype(cfg.dtype), router_l["w_DRM"].astype(cfg.dtype),
                           preferred_element_type=jnp.float32)
  live_111M = (jnp.arange(logits_BTRM.shape[-1]) <= l)[None, None, None, :]
  return _softmax_over_sources(logits_BTRM, live_111M)


def num_slots(cfg: ModelConfig) -> tuple[int, int]:
  """(block size S, buffer slots M): S = min(block_size, L), M = L rounded up to a multiple of S."""
  S = min(cfg.lime.block_size, cfg.num_layers)
  return S, -(-cfg.num_layers // S) * S


def group_size(cfg: ModelConfig) -> int:
  """Layers per group of the two-level schedule (lime_vjp.far_forward), kv router only.

  A group's far sources (all slots below it) are mixed for its G layers at once, the near ones (inside
  the group) per layer: slot reads fall from ~L^2/2 to ~L^2/(2G) + L*G/2, least near G = sqrt(L).
  Auto (0): the multiple of the block size S dividing L closest to sqrt(L) from below (at least S), as
  long as the arrays in which the backward pass parks a group's partial sums (lime_vjp._pull_bwd: G
  buffer slots, 2G under any remat policy but 'none', as those need prev again) take at most half the
  buffer; else, and for 1 or S not dividing L, the per-layer schedule. With S = 4: 8 layers group by 4
  without remat (7% faster there on 2 CPU cores) and not with it (as fast either way, half a buffer
  less memory). Under remat, `lime.keep_far` (default) then swaps the second G slots for the L - G
  far parts the forward pass keeps: G + (L - G) slots, one buffer, the size of the cotangent that
  needs no memory of its own (it shares the buffer)."""
  S, _ = num_slots(cfg)
  L, G = cfg.num_layers, cfg.lime.group_size
  if cfg.lime.router != "kv" or G == 1:
    return 1
  if G > 1:
    if G % S or L % G:
      raise ValueError(f"config.model.lime.group_size={G} must be a multiple of block_size={S} that "
                       f"divides num_layers={L}; use 0 (auto) or 1 (off).")
    return G
  options = [g for g in range(S, L + 1, S) if L % g == 0]
  if not options:
    return 1
  below = [g for g in options if g <= max(S, math.isqrt(L))]
  G = max(below) if below else min(options)
  parked_slots = G if cfg.remat_policy == "none" else 2 * G
  return G if parked_slots <= L // 2 else 1


def _layer_fns(cfg: ModelConfig) -> LayerFns:
  """The router's stages for `cfg` (see lime_vjp.LayerFns)."""
  S, M = num_slots(cfg)
  R, H, D = cfg.num_kv_heads, cfg.head_dim, cfg.d_model
  common = dict(num_slots=M, block_size=S, dtype=cfg.dtype, policy=cfg.remat_policy)
  if cfg.lime.router == "kv":
    return LayerFns(pre=lambda router_l, h, l: router_l["coef"], mix=_matrix_mix,
                    post=functools.partial(_kv_post, cfg), entry_shape=lambda B, T: (R, B, T, 2 * H),
                    coef_axis=1, static_coef=lambda router: router["coef"], group_size=group_size(cfg),
                    keep_far=cfg.lime.keep_far, entry=functools.partial(_kv_entry, cfg), **common)
  if cfg.lime.router == "dynamic":
    return LayerFns(pre=functools.partial(_dynamic_pre, cfg), mix=_dynamic_mix,
                    post=functools.partial(_v1_post, cfg), entry_shape=lambda B, T: (B, T, D),
                    coef_axis=3, **common)
  return LayerFns(pre=lambda router_l, h, l: router_l["coef"], mix=_matrix_mix,
                  post=functools.partial(_v1_post, cfg), entry_shape=lambda B, T: (B, T, D),
                  coef_axis=1, static_coef=lambda router: router["coef"][..., None], **common)


# ------------------------------------------------------------------------------------------ stacks
def _scan_stack(fns: LayerFns, layers, router, h_BTD, positions_BT, cache,
                collect: tuple[str, ...]) -> StackOutput:
  """Plain `lax.scan` with the buffer in the carry (all M slots mixed at every layer). Exact and
  differentiable, but reverse mode saves the buffer at every layer: O(L^2) memory."""
  standard = tuple(c for c in collect if c not in LIME_COLLECTABLE)

  def collected(extras, h_BTD, coef):
    picked = pick_collected(extras, h_BTD, standard)
    if "router" in collect:
      picked["router"] = coef
    return picked

  h_BTD, stacked, caches = buffer_scan(fns, layers, router, h_BTD, positions_BT, cache, collected)
  return StackOutput(h_BTD, {}, stacked, caches)


def run_lime_stack(cfg: ModelConfig, layers, topo_params, h_BTD: jax.Array, positions_BT: jax.Array,
                   cache: dict | None = None, collect: tuple[str, ...] = (),
                   impl: str = "vjp") -> StackOutput:
  """The 'lime' topology. impl='vjp': memory-linear custom VJP (training); 'scan': plain scan.

  With a cache or collections the plain scan runs (forward use; it stays exact if differentiated).
  """
  fns = _layer_fns(cfg)
  router = _stacked_router(topo_params, cfg, fns.num_slots)
  if impl == "scan" or cache is not None or collect:
    return _scan_stack(fns, layers, router, h_BTD, positions_BT, cache, tuple(collect))
  if impl != "vjp":
    raise ValueError(f"impl={impl!r} is unknown; use 'vjp' or 'scan'.")
  return StackOutput(lime_stack(fns, layers, router, h_BTD, positions_BT), {}, {}, None)


register_topology(Topology("lime", run_lime_stack, init_router_params))
# The plain-scan LIMe (buffer in the carry), for the benchmark and tests only; not a config choice.
register_topology(Topology("lime_scan", functools.partial(run_lime_stack, impl="scan"), init_router_params))


# ------------------------------------------------------------------------------------------- flops
def mixing_flops_per_token(cfg: ModelConfig) -> float:
  """Forward FLOPs per token that LIMe's mixing adds (the hook lime_jax/flops.py calls).

  kv router: 4 * D_kv * R * (l+1) at every layer l >= 1 (SPEC §2.4: R outputs of 2H values, each a
  sum over (l+1)R sources). v1: 2 * R * D * (l+1) per layer for the per-head mixtures, plus the dynamic
  router's Linear 2 * D * R * (l+1). Effective (triangular) counts: padding is not counted.
  """
  L, D, R, H = cfg.num_layers, cfg.d_model, cfg.num_kv_heads, cfg.head_dim
  sources = L * (L + 1) // 2 - 1  # sum over l >= 1 of (l + 1)
  if cfg.lime.router == "kv":
    return float(4 * R * H * R * sources)
  return float(2 * R * D * sources * (2 if cfg.lime.router == "dynamic" else 1))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token with LIMe's mixing included, in lime_jax/flops.py's convention:
  3 x forward; forward = 2 x matmul parameters (q, kv, o, SwiGLU, unembedding) + causal attention
  halved + `mixing_flops_per_token` for the 'lime' topologies. Remat recomputation is not counted."""
  from lime_jax import flops  # local: lime_jax.flops imports this module lazily too
  if cfg.topology == "lime_scan":
    cfg = dataclasses.replace(cfg, topology="lime")
  return 3.0 * flops.forward_flops_per_token(cfg, seq_len)


def buffer_bytes(cfg: ModelConfig, batch: int, seq_len: int) -> int:
  """Bytes of the LIMe buffer of one forward pass (M slots, see `num_slots`); its cotangent is the same."""
  fns = _layer_fns(cfg)
  return int(fns.num_slots * math.prod(fns.entry_shape(batch, seq_len)) * jnp.dtype(cfg.dtype).itemsize)
