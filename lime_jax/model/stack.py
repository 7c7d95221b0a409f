"""The layer stack: a `jax.lax.scan` over stacked per-layer parameters, and the `Topology` interface.

A *topology* decides how layers connect: `plain` is the LLaMA residual stream (this file); `lime` routes
keys/values across layers (lime_jax/model/lime.py). Each module exports a `Topology` with its extra
parameters and its stack runner, listed in lime_jax/model/topologies.py, so the Transformer never
branches on the method.

The scan carry is explicit, `{'h': h_BTD, 'aux': {...}}`: topologies add their own state (a LIMe kv buffer)
and auxiliary losses accumulate in `aux` without materialising every layer's activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lime_jax.model.block import Block
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.tables import LayerTables

# Per-layer outputs a caller can ask the stack to return, stacked over layers.
COLLECTABLE = ("hidden", "value", "attn_probs")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StackOutput:
  """What a stack returns: final residual stream, summed aux losses, per-layer collections, cache.

  A pytree, so a jitted forward can return it.
  """

  h_BTD: jax.Array
  aux: dict[str, jax.Array]
  collected: dict[str, jax.Array]
  cache: dict | None = None


@dataclasses.dataclass(frozen=True)
class Topology:
  """How layers connect. `init_params(rng, cfg)` gives the topology's own parameters (or None);
  `run(cfg, layers, topo_params, h_BTD, tables, cache, collect)` runs the stack. `layer_hook`:
  whether `run` also takes `layer_hook=` (called per layer in the scan; lime_jax/model/regularizers.py)."""

  name: str
  run: Callable[..., StackOutput]
  init_params: Callable[[jax.Array, ModelConfig], Any] | None = None
  layer_hook: bool = False
  # Per-token forward FLOPs the topology adds to the backbone (lime_jax/flops.py); None: 0.
  extra_flops: Callable[[ModelConfig], float] | None = None
  # signature(model_cfg) -> entries the checkpoint's architecture signature adds (lime_jax/checkpoint.py).
  signature: Callable[[Any], dict[str, Any]] | None = None
  # lime_router(cfg) -> the LIMe router object (lime_jax/model/routers/); None: the topology has none.
  lime_router: Callable[[ModelConfig], Any] | None = None


def remat(fn: Callable, policy: str) -> Callable:
  """Wraps a scan body in `jax.checkpoint` per `config.model.remat_policy`.

  'none': save everything the backward pass needs; 'full': save only the body's inputs and recompute
  the layer; 'save_dots': keep matmul outputs (without batch dims), recompute the elementwise rest.
  """
  if policy == "none":
    return fn
  policies = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }
  return jax.checkpoint(fn, policy=policies[policy], prevent_cse=False)


def pick_collected(extras: dict, h_BTD: jax.Array, collect: tuple[str, ...]) -> dict[str, jax.Array]:
  """The per-layer values a caller asked for, from one layer's outputs."""
  unknown = set(collect) - set(COLLECTABLE)
  if unknown:
    raise ValueError(f"cannot collect {sorted(unknown)}; collectable: {COLLECTABLE}.")
  if "attn_probs" in collect and extras["attn_probs"] is None:
    raise ValueError("collecting 'attn_probs' needs config.model.attention_impl='explicit'.")
  values = {"hidden": h_BTD, **extras}
  return {name: values[name] for name in collect}


def run_plain_stack(
  cfg: ModelConfig,
  layers: Any,
  topo_params: Any,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None = None,
  collect: tuple[str, ...] = (),
  layer_hook: Any = None,
) -> StackOutput:
  """Scans the LLaMA block over the stacked layer parameters.

  `layer_hook` (optional, see lime_jax/model/regularizers.py): `layer_hook(l, h_BTD, aux) -> aux` after
  each block l, with the carry's aux starting from `layer_hook.init_aux()`.
  """
  del topo_params
  block = Block(cfg)

  def body(carry, xs):
    params_l, cache_l, l = xs
    h_BTD, extras = block.apply({"params": params_l}, carry["h"], tables, cache=cache_l, layer=l)
    ys = {"collected": pick_collected(extras, h_BTD, collect), "cache": extras["cache"]}
    aux = carry["aux"] if layer_hook is None else layer_hook(l, h_BTD, carry["aux"])
    return {"h": h_BTD, "aux": aux}, ys

  aux = {} if layer_hook is None else layer_hook.init_aux()
  xs = (layers, cache, jnp.arange(cfg.num_layers))
  carry, ys = jax.lax.scan(remat(body, cfg.remat_policy), {"h": h_BTD, "aux": aux}, xs)
  return StackOutput(carry["h"], carry["aux"], ys["collected"], ys["cache"])


TOPOLOGY = Topology("plain", run_plain_stack, layer_hook=True)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
  """An empty decoding cache for every layer: mixed, RoPE'd keys and values, [L, B, S, R, H] each."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {
    "k": jnp.zeros(shape, dtype),
    "v": jnp.zeros(shape, dtype),
    "index": jnp.zeros((cfg.num_layers,), jnp.int32),
  }
