"""The `Router` interface and the helpers its kinds share (source grids, padding, block mixes).

A router is the 'lime' topology's `lime_stack.StackStages`: `layer_fns(cfg)` gives its stages
(`lime_stack.LayerFns`, each a Protocol called with named arguments), `stacked` the per-layer arrays
they read. tests/integration/test_lime_exactness.py checks every registered router against that contract (the
forward pass and the memory-linear backward pass against an unrolled loop of its own stages).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.lime_stack import LayerFns
from lime_jax.model.model_config import ModelConfig


class Router(abc.ABC):
  """One LIMe router kind (a `lime_stack.StackStages`). Stateless: every method takes the ModelConfig.

  `input_dependent`: the routing weights depend on the tokens (no `routing_weights`; the analysis then
  averages them over the tokens it is given).
  """

  name: str = ""
  input_dependent: bool = False

  @abc.abstractmethod
  def init_params(self, rng: jax.Array, cfg: ModelConfig) -> dict:
    """The router's parameters (stored by the Transformer under params['router'])."""

  @abc.abstractmethod
  def param_count(self, cfg: ModelConfig) -> int:
    """Parameters that reach the output (padding and layer 0 excluded)."""

  @abc.abstractmethod
  def routing_weights(self, router_params: dict, cfg: ModelConfig) -> jax.Array:
    """The static coefficients of every layer, unpadded over sources (M = L)."""

  @abc.abstractmethod
  def stacked(self, router_params: dict, cfg: ModelConfig, M: int) -> dict:
    """Per-layer arrays (leading [L]) that the stack scans over, sources padded to M slots."""

  @abc.abstractmethod
  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    """The router's stages and buffer for `cfg` (see LayerFns)."""

  def initial_state(self, h_BTD: jax.Array) -> jax.Array:
    """The stack's input state: the embeddings themselves."""
    return h_BTD

  @abc.abstractmethod
  def mixing_flops_per_token(self, cfg: ModelConfig) -> float:
    """Forward FLOPs per token the mixing adds (effective, triangular counts: padding not counted)."""

  @abc.abstractmethod
  def analysis(self, params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None) -> dict[str, Any]:
    """Numpy routing summaries of the model `params` (lime_jax/analysis/router.py's conventions):
    `matrices` (one per layer), `source_share` [L, L], `self_retrieval_per_head` [L, R], and any extras."""

  def group_size(self, cfg: ModelConfig) -> int:
    """Layers per group of the two-level schedule (lime_mix.far_forward); 1: per-layer."""
    del cfg
    return 1


# ---------------------------------------------------------------------------------------- helpers
def source_pairs(L: int) -> int:
  """sum over layers l >= 1 of their l + 1 sources."""
  return L * (L + 1) // 2 - 1


def layer_source_grid(L: int, M: int) -> tuple[jax.Array, jax.Array]:
  """Integer grids l [L, 1] and m [1, M] (layer, source slot)."""
  return jnp.arange(L)[:, None], jnp.arange(M)[None, :]


def pad_sources(x: jax.Array, axis: int, M: int) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, M - x.shape[axis])
  return jnp.pad(x, pad)


def num_slots(cfg: ModelConfig) -> tuple[int, int]:
  """(block size S, buffer slots M): S = min(block_size, L), M = L rounded up to a multiple of S."""
  S = min(cfg.lime.block_size, cfg.num_layers)
  return S, -(-cfg.num_layers // S) * S


def common_fns(cfg: ModelConfig) -> dict[str, Any]:
  """The LayerFns fields every router fills the same way."""
  S, M = num_slots(cfg)
  return dict(num_slots=M, block_size=S, dtype=cfg.dtype, policy=cfg.remat_policy)


def softmax_over_sources(logits_xM: jax.Array, live_xM: jax.Array) -> jax.Array:
  """Softmax over the source axis restricted to live slots (select, so NaN in dead slots is harmless)."""
  return jax.nn.softmax(jnp.where(live_xM, logits_xM.astype(jnp.float32), -jnp.inf), axis=-1)


def live(start, S: int, l) -> jax.Array:
  """Which of the S source slots from `start` are earlier layers (< l)."""
  return start + jnp.arange(S) < l


def matrix_mix(*, coef_block, buf_block, start, l):
  """The `mix` stage (`MixFn`) of the static routers: prev[r] = sum_k coef[r, k] buf[k] over one block,
  one [R, K] x [K, X] matmul (K = the block's source slots (x source heads), X = the slot's B*T*C
  values). kv: coef [R, S, R], buf [S, R, B, T, C]; static: coef [R, S], buf [S, B, T, D]. Returns
  [R, *slot dims]."""
  coef_blk, buf_blk = coef_block, buf_block
  R, K, S = coef_blk.shape[0], math.prod(coef_blk.shape[1:]), coef_blk.shape[1]
  live_1S = live(start, S, l).reshape((1, S) + (1,) * (coef_blk.ndim - 2))
  coef_blk = jnp.where(live_1S, coef_blk, jnp.zeros_like(coef_blk))  # select: NaN in dead slots is harmless
  coef_RK = coef_blk.reshape(R, K).astype(buf_blk.dtype)
  out_RX = jnp.dot(coef_RK, buf_blk.reshape(K, -1), preferred_element_type=jnp.float32)
  return out_RX.reshape((R,) + buf_blk.shape[coef_blk.ndim - 1 :])


def static_coef_pre(*, router_l: dict, h: jax.Array, l) -> jax.Array:
  """The `pre` stage (`PreFn`) of the static routers: layer l's stacked coefficients."""
  del h, l
  return router_l["coef"]


def stacked_coef(*, router: dict) -> jax.Array:
  """The `static_coef` stage (`StaticCoefFn`) of routers whose stacked coef is [L, R, M, E]."""
  return router["coef"]


def stacked_coef_one_row(*, router: dict) -> jax.Array:
  """The `static_coef` stage (`StaticCoefFn`) of routers whose stacked coef is [L, R, M] (a slot is one
  row, E = 1)."""
  return router["coef"][..., None]


def softmax_summaries(a_LRM: np.ndarray) -> dict[str, Any]:
  """Summaries of softmax weights a [L, R, L] (rows sum to 1 over m <= l)."""
  L = a_LRM.shape[0]
  return {
    "matrices": [a_LRM[l, :, : l + 1] for l in range(L)],
    "source_share": a_LRM.mean(axis=1),
    "self_retrieval_per_head": np.stack([a_LRM[l, :, l] for l in range(L)]),
  }
