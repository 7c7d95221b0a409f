"""Hyper-Connections (Zhu et al., ICLR 2025; HC baseline of corl-team/lime `src/lm/hc.py`; docs/methods.md
§3).

The residual stream becomes n streams H [B, T, n, D] (`hyper_connections.num_streams`, 4). Around each
sub-layer (attention, MLP) of every block, with alpha = [A_m | A_r] [n, n+1] and beta = B [n]:

  width connection:  [h_in, H'] = alpha^T H      h_in = A_m^T H (what the sub-layer normalises and reads),
                                                 H' = A_r^T H (the streams carried past it)
  depth connection:  H_new = beta out + H'        out = the sub-layer's output (broadcast to the streams)

Static (SHC): alpha, beta are parameters. Dynamic (DHC, `hyper_connections.dynamic`, the default):
alpha = static + s_a tanh(norm(H) W_a), beta = static + s_b tanh(norm(H) w_b), per token and stream, with
norm = LayerNorm without affine (eps 1e-5, as the reference), W_a [D, n+1] and w_b [D] init 0 and the
scales s_a, s_b learnable, init 0.01. Init: A_m = e_{layer mod n}, A_r = I, B = 1.

The embeddings are copied into every stream; after the last block the streams are summed and divided by
n (the mean) before the final norm. The reference sums; the two differ only in how the final RMSNorm's
eps acts (eps / n^2 relative to the sum), and with the mean that eps acts exactly as in the baseline, so
at init (all streams equal to the baseline's residual) the logits are exactly the baseline's.

Parameters (`params['router']`, every leaf stacked [L, ...]), per layer and sub-layer: static n(n+2);
dynamic adds D(n+2) + 2. The Block's `residual` hook (lime_jax/model/block.py) does the wiring, so the
block itself is unchanged; the scan carries H. 'hidden' collections hold the stream mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lime_jax.model import taps
from lime_jax.model.block import Block, Residual
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput, Topology, pick_collected, remat
from lime_jax.model.tables import LayerTables

SUBLAYERS = ("attn", "mlp")
DYNAMIC_SCALE_INIT = 0.01
LAYER_NORM_EPS = 1e-5


def init_hc_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """Per sub-layer: static_alpha_LEK [L, n, n+1] (column 0 = e_{l mod n}, then I), static_beta_LE = 1;
  dynamic: dynamic_alpha_LDK, dynamic_beta_LD = 0, dynamic_*_scale_L = 0.01."""
  del rng
  L, E, D = cfg.num_layers, cfg.hyper_connections.num_streams, cfg.d_model

  def sublayer() -> dict:  # fresh arrays per sub-layer: no two leaves share a buffer (donation)
    a_m_LE = jax.nn.one_hot(jnp.arange(L) % E, E)
    eye_LEE = jnp.broadcast_to(jnp.eye(E), (L, E, E))
    p = {
      "static_alpha_LEK": jnp.concatenate([a_m_LE[:, :, None], eye_LEE], axis=2),
      "static_beta_LE": jnp.ones((L, E)),
    }
    if cfg.hyper_connections.dynamic:
      p.update(
        dynamic_alpha_LDK=jnp.zeros((L, D, E + 1)),
        dynamic_alpha_scale_L=jnp.full((L,), DYNAMIC_SCALE_INIT),
        dynamic_beta_LD=jnp.zeros((L, D)),
        dynamic_beta_scale_L=jnp.full((L,), DYNAMIC_SCALE_INIT),
      )
    return {k: jnp.array(v, cfg.pdtype) for k, v in p.items()}

  return {name: sublayer() for name in SUBLAYERS}


def hc_param_count(cfg: ModelConfig) -> int:
  """2 L n(n+2) static; + 2 L (D(n+2) + 2) dynamic."""
  L, E, D = cfg.num_layers, cfg.hyper_connections.num_streams, cfg.d_model
  per_sublayer = E * (E + 2) + ((D * (E + 2) + 2) if cfg.hyper_connections.dynamic else 0)
  return 2 * L * per_sublayer


def _layer_norm(x_BTED: jax.Array) -> jax.Array:
  x32 = x_BTED.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)


def connection_weights(p: dict, H_BTED: jax.Array, dynamic: bool) -> tuple[jax.Array, jax.Array]:
  """(alpha [B, T, n, n+1] or [n, n+1], beta [B, T, n] or [n]) of one sub-layer, in fp32."""
  alpha_EK, beta_E = p["static_alpha_LEK"].astype(jnp.float32), p["static_beta_LE"].astype(jnp.float32)
  if not dynamic:
    return alpha_EK, beta_E
  n_BTED = _layer_norm(H_BTED)
  wa_DK, wb_D = p["dynamic_alpha_LDK"].astype(jnp.float32), p["dynamic_beta_LD"].astype(jnp.float32)
  dyn_alpha_BTEK = jnp.tanh(jnp.einsum("bted,dk->btek", n_BTED, wa_DK)) * p["dynamic_alpha_scale_L"]
  dyn_beta_BTE = jnp.tanh(jnp.einsum("bted,d->bte", n_BTED, wb_D)) * p["dynamic_beta_scale_L"]
  return alpha_EK[None, None] + dyn_alpha_BTEK, beta_E[None, None] + dyn_beta_BTE


def hc_residual(cfg: ModelConfig, hc_l: dict) -> Residual:
  """The Block's residual hook for one layer: state = the streams H [B, T, n, D]."""
  dynamic = cfg.hyper_connections.dynamic

  def read(name: str, H_BTED: jax.Array):
    alpha, beta = connection_weights(hc_l[name], H_BTED, dynamic)
    spec = "btek,bted->btkd" if dynamic else "ek,bted->btkd"
    mix_BTKD = jnp.einsum(spec, alpha, H_BTED.astype(jnp.float32))
    return mix_BTKD[:, :, 0].astype(H_BTED.dtype), (mix_BTKD[:, :, 1:], beta)

  def write(name: str, H_BTED: jax.Array, ctx, out_BTD: jax.Array):
    rest_BTED, beta = ctx
    beta_BTE = beta if dynamic else beta[None, None, :]
    new_BTED = beta_BTE[..., None] * out_BTD.astype(jnp.float32)[:, :, None, :] + rest_BTED
    return new_BTED.astype(H_BTED.dtype)

  return Residual(read, write)


def merge_streams(H_BTED: jax.Array) -> jax.Array:
  """The streams' mean (sum / n), what the final norm reads."""
  return (jnp.sum(H_BTED.astype(jnp.float32), axis=2) / H_BTED.shape[2]).astype(H_BTED.dtype)


def run_hc_stack(
  cfg: ModelConfig,
  layers,
  topo_params,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None = None,
  collect: tuple[str, ...] = (),
) -> StackOutput:
  """Scans the Block with the Hyper-Connections residual hook; the carry holds the n streams."""
  E = cfg.hyper_connections.num_streams
  block = Block(cfg)

  def body(carry, xs):
    params_l, hc_l, cache_l, l = xs
    H_BTED, extras = block.apply(
      {"params": params_l}, carry["h"], tables, cache=cache_l, residual=hc_residual(cfg, hc_l), layer=l
    )
    collected = pick_collected(extras, merge_streams(H_BTED), collect) if collect else {}
    return {"h": H_BTED, "aux": carry["aux"]}, {"collected": collected, "cache": extras["cache"]}

  H_BTED = jnp.broadcast_to(h_BTD[:, :, None, :], (*h_BTD.shape[:2], E, h_BTD.shape[2]))
  # The layer index only where edits need it (lime_jax/model/taps.py): the training program stays as it was.
  xs = (layers, topo_params, cache, jnp.arange(cfg.num_layers) if taps.active() else None)
  carry, ys = jax.lax.scan(remat(body, cfg.remat_policy), {"h": H_BTED, "aux": {}}, xs)
  return StackOutput(merge_streams(carry["h"]), carry["aux"], ys["collected"], ys["cache"])


def extra_forward_flops(cfg: ModelConfig) -> float:
  """Per-token forward FLOPs per sub-layer: width connection 2 n(n+1) D, depth connection 2 n D; dynamic
  adds the projections 2 n D (n+2) (norm and tanh not counted). Plus the final stream sum, n D."""
  E, D = cfg.hyper_connections.num_streams, cfg.d_model
  per_sublayer = 2 * E * (E + 1) * D + 2 * E * D
  if cfg.hyper_connections.dynamic:
    per_sublayer += 2 * E * D * (E + 2)
  return float(2 * cfg.num_layers * per_sublayer + E * D)


TOPOLOGY = Topology("hyper_connections", run_hc_stack, init_hc_params, extra_flops=extra_forward_flops)
