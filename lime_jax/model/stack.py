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
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lime_jax.model import taps
from lime_jax.model.block import Block
from lime_jax.model.dense import DENSE_OUTPUT
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.tables import LayerTables

# Per-layer outputs a caller can ask the stack to return, stacked over layers (lime_jax/model/taps.py;
# LIMe adds 'router').
COLLECTABLE = tuple(name for name in taps.POINTS if name != "router")


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


class RunFn(Protocol):
  """run(cfg=..., layers=..., topo_params=..., h_BTD=..., tables=..., cache=..., collect=...) ->
  StackOutput: the whole stack.

  cfg: the ModelConfig; layers: the stacked Block parameters (leaves [L, ...]); topo_params: the
  topology's own parameters (params['router'], `InitParamsFn`; None without); h_BTD [B, T, D]: the
  embeddings; tables: the shared `LayerTables`; cache: the stacked decoding cache (`init_cache`) or
  None; collect: names of per-layer values to stack over layers (`COLLECTABLE`, LIMe adds 'router').
  A topology registered with `layer_hook=True` also takes `layer_hook=` (`hook(l, h_BTD, aux) -> aux`
  after each block, lime_jax/model/regularizers.py).
  """

  def __call__(
    self,
    *,
    cfg: ModelConfig,
    layers: Any,
    topo_params: Any,
    h_BTD: jax.Array,
    tables: LayerTables,
    cache: dict | None = None,
    collect: tuple[str, ...] = (),
  ) -> StackOutput: ...


class InitParamsFn(Protocol):
  """init_params(rng, cfg) -> the topology's parameters (Flax calls it positionally: `self.param`)."""

  def __call__(self, rng: jax.Array, cfg: ModelConfig) -> Any: ...


class ExtraFlopsFn(Protocol):
  """extra_flops(cfg) -> per-token forward FLOPs the topology adds to the backbone (model/flops.py)."""

  def __call__(self, cfg: ModelConfig) -> float: ...


class SignatureFn(Protocol):
  """signature(model_cfg) -> entries the checkpoint's architecture signature adds
  (lime_jax/checkpoint/structure.py; model_cfg: config.model, a ConfigDict)."""

  def __call__(self, model_cfg: Any) -> dict[str, Any]: ...


class RouterOfFn(Protocol):
  """lime_router(cfg) -> the LIMe router object (lime_jax/model/routers/base.py `Router`)."""

  def __call__(self, cfg: ModelConfig) -> Any: ...


class StagesOfFn(Protocol):
  """stages(cfg) -> the `lime_stack.StackStages` the topology runs on the memory-linear stack (the
  'lime' topology: its router; DenseFormer: its DWA). (Typed Any here: lime_stack imports this module.)"""

  def __call__(self, cfg: ModelConfig) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Topology:
  """How layers connect: `run` (`RunFn`) runs the stack; `init_params` (`InitParamsFn`) gives the
  topology's own parameters (None: it has none). `layer_hook`: whether `run` also takes `layer_hook=`
  (called per layer in the scan; lime_jax/model/regularizers.py)."""

  name: str
  run: RunFn
  init_params: InitParamsFn | None = None
  layer_hook: bool = False
  # Per-token forward FLOPs the topology adds to the backbone (lime_jax/model/flops.py); None: 0.
  extra_flops: ExtraFlopsFn | None = None
  # Entries the checkpoint's architecture signature adds; None: none.
  signature: SignatureFn | None = None
  # The LIMe router object (lime_jax/model/routers/); None: the topology has none.
  lime_router: RouterOfFn | None = None
  # The stages of a topology run by lime_stack.lime_stack (custom VJP over a write-once buffer); None:
  # it runs otherwise. tests/integration/test_lime_exactness.py checks every such topology (and every LIMe
  # router) for exactness from these alone.
  stages: StagesOfFn | None = None


def remat(fn: Callable, policy: str) -> Callable:
  """Wraps a scan body in `jax.checkpoint` per `config.model.remat_policy`.

  'none': save everything the backward pass needs; 'full': save only the body's inputs and recompute
  the layer; 'save_dots': keep matmul outputs (without batch dims), recompute the elementwise rest.
  """
  if policy == "none":
    return fn
  policies = {
    "full": jax.checkpoint_policies.nothing_saveable,
    # The projections are custom-VJP calls (lime_jax/model/dense.py), which the dot policy cannot see
    # into: their outputs are saved by name.
    "save_dots": jax.checkpoint_policies.save_from_both_policies(
      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      jax.checkpoint_policies.save_only_these_names(DENSE_OUTPUT),
    ),
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

  `layers` may also be a list of per-layer parameters (`split_layers`), and then `cache` a list of
  per-layer caches (`split_cache`) or None: the layers run unrolled, on weights and caches that are
  arrays of their own. A scan slices the stacked weights and cache of layer l, and XLA (CPU) copies a
  slice before a matmul reads it: in a decoding step of a few tokens that copy takes about half as long
  as the matmuls (docs/benchmarks.md, "Greedy decoding vs transformers"). Unrolled, the program is L
  layers long (compiles slower); decoding (lime_jax/model/decode.py `use_unrolled`) splits the weights once,
  outside its loop.
  """
  del topo_params
  block = Block(cfg)
  if isinstance(layers, (list, tuple)):
    return _run_unrolled(block, layers, h_BTD, tables, cache, collect, layer_hook)

  def body(carry, xs):
    params_l, l = xs
    cache_l = None
    if cache is not None:  # in the carry, updated in place (as scan xs / ys it is copied every call)
      cache_l = jax.tree.map(lambda c_L: jax.lax.dynamic_index_in_dim(c_L, l, 0, False), carry["cache"])
    h_BTD, extras = block.apply({"params": params_l}, carry["h"], tables, cache=cache_l, layer=l)
    aux = carry["aux"] if layer_hook is None else layer_hook(l, h_BTD, carry["aux"])
    new = {"h": h_BTD, "aux": aux}
    if cache is not None:  # write back the slots of this call's tokens only (in place)
      new["cache"] = _write_back(carry["cache"], extras["cache"], cache_l["index"], h_BTD.shape[1], l)
    return new, pick_collected(extras, h_BTD, collect)

  init = {"h": h_BTD, "aux": {} if layer_hook is None else layer_hook.init_aux()}
  if cache is not None:
    init["cache"] = cache
  carry, collected = jax.lax.scan(remat(body, cfg.remat_policy), init, (layers, jnp.arange(cfg.num_layers)))
  return StackOutput(carry["h"], carry["aux"], collected, carry.get("cache"))


def _write_back(cache_L: dict, cache_l: dict, index: jax.Array, T: int, l: jax.Array) -> dict:
  """The stacked cache with layer l's slots index..index+T-1 (and its index) taken from `cache_l`."""
  new = {"index": cache_L["index"].at[l].set(cache_l["index"])}
  for name, c_L in cache_L.items():
    if name != "index":  # [L, B, S, ...]: the slots are axis 2
      tokens = jax.lax.dynamic_slice_in_dim(cache_l[name], index, T, axis=1)[None]
      start = (l, 0, index) + (0,) * (c_L.ndim - 3)
      new[name] = jax.lax.dynamic_update_slice(c_L, tokens.astype(c_L.dtype), start)
  return new


def _run_unrolled(
  block: Block,
  layers: Any,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: list | None,
  collect: tuple[str, ...],
  layer_hook: Any,
) -> StackOutput:
  """`run_plain_stack` on per-layer parameters (and caches), one layer after the other."""
  if cache is not None and (not isinstance(cache, (list, tuple)) or len(cache) != len(layers)):
    raise ValueError("per-layer parameters (split_layers) need per-layer caches (split_cache) or none.")
  aux = {} if layer_hook is None else layer_hook.init_aux()
  collected, caches = [], []
  for l, params_l in enumerate(layers):
    index = jnp.asarray(l, jnp.int32)
    cache_l = None if cache is None else cache[l]
    h_BTD, extras = block.apply({"params": params_l}, h_BTD, tables, cache=cache_l, layer=index)
    aux = aux if layer_hook is None else layer_hook(index, h_BTD, aux)
    collected.append(pick_collected(extras, h_BTD, collect))
    caches.append(extras["cache"])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *collected)
  return StackOutput(h_BTD, aux, stacked, None if cache is None else caches)


def split_layers(layers: Any, num_layers: int) -> list:
  """The stacked layer parameters (leaves [L, ...]) as a list of L per-layer trees."""
  return [jax.tree.map(lambda x, l=l: x[l], layers) for l in range(num_layers)]


def split_cache(cache: dict) -> list[dict]:
  """A stacked cache (`init_cache`: leaves [L, ...]) as a list of per-layer caches."""
  return [jax.tree.map(lambda x, l=l: x[l], cache) for l in range(cache["index"].shape[0])]


TOPOLOGY = Topology("plain", run_plain_stack, layer_hook=True)


def init_cache(
  cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32, slot_positions: bool = False
) -> dict:
  """An empty decoding cache for every layer: mixed, RoPE'd keys and values, [L, B, S, R, H] each, and
  the next slot per layer, index [L]. `slot_positions`: also the position held by each slot, pos
  [L, B, S] (int32), for rows decoded at different positions (lime_jax/model/block.py `_update_cache`);
  without it slot s holds position s."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  cache = {
    "k": jnp.zeros(shape, dtype),
    "v": jnp.zeros(shape, dtype),
    "index": jnp.zeros((cfg.num_layers,), jnp.int32),
  }
  if slot_positions:
    cache["pos"] = jnp.zeros(shape[:3], jnp.int32)
  return cache
