"""LIMe, Layer-Integrated Memory (docs/methods.md §2): the 'lime' topology, whichever its router.

The router (`cfg.lime.router`: 'kv' (v2, default), or the v1 'static' / 'top_p' / 'dynamic') is an
object of lime_jax/model/routers/ that owns its parameters, its three stages per layer (pre / mix /
post: lime_stack.LayerFns, the `StackStages` it provides), its FLOPs and its analysis; this module only
runs it (ask `router_of(cfg)` for the rest). Training runs the stages
through `lime_stack.lime_stack` (custom VJP, memory linear in depth). Decoding with a cache, collections
and the 'lime_scan' topology (the quadratic plain-scan reference of the benchmark) use `_scan_stack`.
Decoding only needs the new tokens' buffer: routing is at the same position and the cache holds the
mixed, RoPE'd keys/values, so the cache has the baseline's size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lime_jax.model import flops, taps
from lime_jax.model.lime_stack import LayerFns, buffer_scan, lime_stack
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.routers import get_router
from lime_jax.model.routers.base import Router
from lime_jax.model.stack import StackOutput, Topology, pick_collected
from lime_jax.model.tables import LayerTables

# Extra per-layer value the lime stacks can collect: the routing coefficients (the `pre` stage's coef).
LIME_COLLECTABLE = ("router",)


def router_of(cfg: ModelConfig) -> Router:
  """The router object of `cfg` (config.model.lime.router)."""
  return get_router(cfg.lime.router)


def init_router_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """The topology's parameters (stored by the Transformer under params['router'])."""
  return router_of(cfg).init_params(rng, cfg)


# ------------------------------------------------------------------------------------------ stacks
def _scan_stack(fns: LayerFns, layers, router, h_BTD, tables, cache, collect: tuple[str, ...]) -> StackOutput:
  """Plain `lax.scan` with the buffer in the carry (all M slots mixed at every layer). Exact and
  differentiable, but reverse mode saves the buffer at every layer: O(L^2) memory."""
  standard = tuple(c for c in collect if c not in LIME_COLLECTABLE)

  def collected(extras, h_BTD, coef):
    picked = pick_collected(extras, h_BTD, standard)
    if "router" in collect:
      picked["router"] = coef
    return picked

  h_BTD, stacked, caches = buffer_scan(fns, layers, router, h_BTD, tables, cache, collected)
  return StackOutput(h_BTD, {}, stacked, caches)


def run_lime_stack(
  cfg: ModelConfig,
  layers,
  topo_params,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None = None,
  collect: tuple[str, ...] = (),
  impl: str = "vjp",
) -> StackOutput:
  """The 'lime' topology. impl='vjp': memory-linear custom VJP (training); 'scan': plain scan.

  With a cache or collections the plain scan runs (forward use; it stays exact if differentiated).
  """
  stages = router_of(cfg)
  fns = stages.layer_fns(cfg)
  router = stages.stacked(topo_params, cfg, fns.num_slots)
  h_BTD = stages.initial_state(h_BTD)
  if impl == "scan" or cache is not None or collect or taps.active():
    return _scan_stack(fns, layers, router, h_BTD, tables, cache, tuple(collect))
  if impl != "vjp":
    raise ValueError(f"impl={impl!r} is unknown; use 'vjp' or 'scan'.")
  return StackOutput(lime_stack(fns, layers, router, h_BTD, tables), {}, {}, None)


# ------------------------------------------------------------------------------------------- flops
def mixing_flops_per_token(cfg: ModelConfig) -> float:
  """Forward FLOPs per token that LIMe's mixing adds (the topology's `extra_flops`; see the router)."""
  return router_of(cfg).mixing_flops_per_token(cfg)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token with LIMe's mixing included, in lime_jax/model/flops.py's convention:
  3 x forward; forward = 2 x matmul parameters (q, kv, o, SwiGLU, unembedding) + causal attention
  halved + `mixing_flops_per_token`. Remat recomputation is not counted."""
  return 3.0 * flops.forward_flops_per_token(cfg, seq_len)


def buffer_bytes(cfg: ModelConfig, batch: int, seq_len: int) -> int:
  """Bytes of the LIMe buffer of one forward pass (M slots, see routers.base.num_slots); its cotangent
  is the same."""
  fns = router_of(cfg).layer_fns(cfg)
  return int(
    fns.num_slots * math.prod(fns.entry_shape(batch=batch, seq=seq_len)) * jnp.dtype(cfg.dtype).itemsize
  )


def signature(model_cfg) -> dict:
  """What a LIMe checkpoint's architecture signature adds (lime_jax/checkpoint/structure.py): the
  router kind."""
  return {"lime.router": model_cfg.lime.router}


TOPOLOGY = Topology(
  "lime",
  run_lime_stack,
  init_router_params,
  extra_flops=mixing_flops_per_token,
  signature=signature,
  lime_router=router_of,
  stages=router_of,
)
# The plain-scan LIMe (buffer in the carry), for the benchmark and tests only; not a config choice.
SCAN_TOPOLOGY = Topology(
  "lime_scan",
  functools.partial(run_lime_stack, impl="scan"),
  init_router_params,
  extra_flops=mixing_flops_per_token,
  signature=signature,
  lime_router=router_of,
  stages=router_of,
)
