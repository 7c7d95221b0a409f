"""DenseFormer: depth-weighted averaging (DWA) after every block (Pagliardini et al. 2024, docs/methods.md
§3).

Block i (0-based) maps its input Y_i to its output X_{i+1}; X_0 = Y_0 = the embeddings. The DWA after
block i gives the next block's input

  Y_{i+1} = sum_{j <= i+1} alpha_{i,j} X_j        (scalar weights, init alpha_{i,i+1} = 1, others 0)

so at init the model is exactly the baseline. Dilation k keeps only j = i+1 (mod k); period p puts a DWA
after blocks with (i+1) % p == 0 only (the others pass X_{i+1} on unchanged), as in epfml/DenseFormer
`DWAModules`. Parameters: one scalar per (DWA, source), stored flat in `params['router']['alpha_P']`;
at k = p = 1 there are L(L+3)/2 of them (L = depth; the DenseFormer paper's d(d+3)/2).

The history X_0..X_L is a static-coefficient, write-once buffer, so training reuses LIMe's memory-linear
custom VJP (`lime_stack.lime_stack`, docs/methods.md §2.4): layer l carries h_l = [Y_l, X_l] ([B, T, 2, D]),
reads
X_m for m < l from the buffer (`mix`, triangular blocks of `denseformer.block_size` slots), adds its own
X_l and the fresh X_{l+1} (`post`), and writes X_l into slot l. The backward pass pulls the buffer's
cotangent; memory is linear in depth. Decoding with a cache and collections use a plain scan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import taps
from lime_jax.model.block import Block
from lime_jax.model.lime_stack import LayerFns, LayerOut, buffer_scan, lime_stack
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput, Topology, pick_collected
from lime_jax.model.tables import LayerTables


# ---------------------------------------------------------------------------------------- parameters
def dwa_sources(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
  """(rows i, cols j) of the learnable weights alpha_{i,j}, in the order of `alpha_P` (static numpy)."""
  L, k, p = cfg.num_layers, cfg.denseformer.dilation, cfg.denseformer.period
  pairs = [(i, j) for i in range(L) if (i + 1) % p == 0 for j in range(i + 2) if (i + 1 - j) % k == 0]
  rows, cols = zip(*pairs) if pairs else ((), ())
  return np.asarray(rows, np.int32), np.asarray(cols, np.int32)


def dwa_param_count(cfg: ModelConfig) -> int:
  """sum over DWA blocks i of floor((i+1)/k) + 1; L(L+3)/2 at dilation 1, period 1."""
  return int(dwa_sources(cfg)[0].size)


def init_dwa_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """alpha_{i,i+1} = 1, every other weight 0 (exactly the baseline at init)."""
  del rng
  rows, cols = dwa_sources(cfg)
  return {"alpha_P": jnp.asarray(cols == rows + 1, cfg.pdtype)}


def dwa_matrix(topo_params: dict, cfg: ModelConfig) -> jax.Array:
  """A [L, L+1]: Y_{i+1} = sum_j A[i, j] X_j. Blocks without a DWA have the fixed row e_{i+1}."""
  L = cfg.num_layers
  rows, cols = dwa_sources(cfg)
  no_dwa = np.asarray([(i + 1) % cfg.denseformer.period != 0 for i in range(L)])
  fixed_LM = np.zeros((L, L + 1), np.float32)
  fixed_LM[np.arange(L)[no_dwa], np.arange(1, L + 1)[no_dwa]] = 1.0
  alpha_P = topo_params["alpha_P"]
  return jnp.asarray(fixed_LM, alpha_P.dtype).at[rows, cols].set(alpha_P)


def num_slots(cfg: ModelConfig) -> tuple[int, int]:
  """(block size S, buffer slots M): S = min(block_size, L), M = L rounded up to a multiple of S."""
  S = min(cfg.denseformer.block_size, cfg.num_layers)
  return S, -(-cfg.num_layers // S) * S


# ------------------------------------------------------------------------------------------ stages
def _pre(*, router_l: dict, h: jax.Array, l) -> jax.Array:
  """The `pre` stage (`PreFn`): layer l's DWA weights coef [1, M] on the earlier outputs X_m."""
  del h, l
  return router_l["coef"]


def _mix(*, coef_block: jax.Array, buf_block: jax.Array, start, l) -> jax.Array:
  """The `mix` stage (`MixFn`): prev [1, B, T, D] = sum over this block's slots m = start + s < l of
  coef[m] X_m (one matmul; the slots >= l are zeroed by select, so NaN in an unwritten slot is
  harmless)."""
  coef_1S, buf_SBTD = coef_block, buf_block
  S = coef_1S.shape[1]
  live_1S = (start + jnp.arange(S) < l)[None, :]
  coef_1S = jnp.where(live_1S, coef_1S, jnp.zeros_like(coef_1S)).astype(buf_SBTD.dtype)
  out_1X = jnp.dot(coef_1S, buf_SBTD.reshape(S, -1), preferred_element_type=jnp.float32)
  return out_1X.reshape((1,) + buf_SBTD.shape[1:])


def _post(cfg: ModelConfig, *, params_l, router_l, coef, prev, h, tables, l, cache_l, entry=None) -> LayerOut:
  """The `post` stage (`PostFn`): block l on Y_l, then the DWA: Y_{l+1} = prev + coef[l] X_l + next
  X_{l+1}. The entry is X_l. coef [1, M], prev [1, B, T, D], h [B, T, 2, D] (Y_l, X_l); no
  `LayerFns.entry`, so `entry` is always None."""
  del entry
  coef_1M, prev_1BTD, h_BT2D = coef, prev, h
  y_BTD, x_BTD = h_BT2D[:, :, 0], h_BT2D[:, :, 1]
  x_next_BTD, extras = Block(cfg).apply({"params": params_l}, y_BTD, tables, cache=cache_l, layer=l)
  own = jax.lax.dynamic_index_in_dim(coef_1M[0], l, keepdims=False).astype(jnp.float32)
  y_next_BTD = (
    prev_1BTD[0]
    + own * x_BTD.astype(jnp.float32)
    + router_l["next"].astype(jnp.float32) * x_next_BTD.astype(jnp.float32)
  )
  h_next_BT2D = jnp.stack([y_next_BTD.astype(cfg.dtype), x_next_BTD], axis=2)
  return LayerOut(h_next_BT2D, x_BTD, extras)


def _static_coef(*, router: dict) -> jax.Array:
  """The `static_coef` stage (`StaticCoefFn`): every layer's DWA weights [L, 1, M, 1]."""
  return router["coef"][..., None]


class DwaStages:
  """DenseFormer's `lime_stack.StackStages` (the Topology's `stages`)."""

  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    S, M = num_slots(cfg)
    D = cfg.d_model
    return LayerFns(
      pre=_pre,
      mix=_mix,
      post=functools.partial(_post, cfg),
      entry_shape=lambda *, batch, seq: (batch, seq, D),
      coef_axis=1,
      num_slots=M,
      block_size=S,
      dtype=cfg.dtype,
      policy=cfg.remat_policy,
      static_coef=_static_coef,
    )

  def stacked(self, router_params: dict, cfg: ModelConfig, M: int) -> dict:
    """Per-layer arrays the stack scans over: coef [L, 1, M] (weights on X_m, m <= l, in slot order)
    and next [L] (the weight on the fresh block output X_{l+1})."""
    L = cfg.num_layers
    A_LM = dwa_matrix(router_params, cfg)
    coef_L1M = jnp.pad(A_LM[:, None, :L], [(0, 0), (0, 0), (0, M - L)])
    return {"coef": coef_L1M, "next": A_LM[jnp.arange(L), jnp.arange(1, L + 1)]}

  def initial_state(self, h_BTD: jax.Array) -> jax.Array:
    """h_BT2D = (Y_0, X_0) = (the embeddings, the embeddings)."""
    return jnp.stack([h_BTD, h_BTD], axis=2)


DWA = DwaStages()


# ------------------------------------------------------------------------------------------ stacks
def _scan_stack(
  fns: LayerFns, layers, router, h_BT2D, tables, cache, collect: tuple[str, ...]
) -> StackOutput:
  """Plain scan with the history in the carry (decoding and collections; O(L^2) memory if
  differentiated). 'hidden' collects Y_{l+1}, the stream the next block reads."""
  h_BT2D, stacked, caches = buffer_scan(
    fns,
    layers,
    router,
    h_BT2D,
    tables,
    cache,
    lambda extras, h_next_BT2D, coef: pick_collected(extras, h_next_BT2D[:, :, 0], collect),
  )
  return StackOutput(h_BT2D[:, :, 0], {}, stacked, caches)


def run_denseformer_stack(
  cfg: ModelConfig,
  layers,
  topo_params,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None = None,
  collect: tuple[str, ...] = (),
  impl: str = "vjp",
) -> StackOutput:
  """The 'denseformer' topology. impl='vjp': memory-linear custom VJP (training); 'scan': plain scan
  (also used with a cache or collections)."""
  fns = DWA.layer_fns(cfg)
  router = DWA.stacked(topo_params, cfg, fns.num_slots)
  h_BT2D = DWA.initial_state(h_BTD)  # Y_0 = X_0 = the embeddings
  if impl == "scan" or cache is not None or collect or taps.active():
    return _scan_stack(fns, layers, router, h_BT2D, tables, cache, tuple(collect))
  if impl != "vjp":
    raise ValueError(f"impl={impl!r} is unknown; use 'vjp' or 'scan'.")
  return StackOutput(lime_stack(fns, layers, router, h_BT2D, tables)[:, :, 0], {}, {}, None)


def extra_forward_flops(cfg: ModelConfig) -> float:
  """Per-token forward FLOPs of the DWAs: 2 D per (DWA, source) weight."""
  return float(2 * cfg.d_model * dwa_param_count(cfg))


TOPOLOGY = Topology(
  "denseformer",
  run_denseformer_stack,
  init_dwa_params,
  extra_flops=extra_forward_flops,
  stages=lambda cfg: DWA,
)
# The plain-scan DenseFormer (history in the carry), for the benchmark and tests only; not a config choice.
SCAN_TOPOLOGY = Topology(
  "denseformer_scan",
  functools.partial(run_denseformer_stack, impl="scan"),
  init_dwa_params,
  extra_flops=extra_forward_flops,
  stages=lambda cfg: DWA,
)
