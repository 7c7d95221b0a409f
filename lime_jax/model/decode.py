"""Greedy decoding of answers with the KV cache.

Rows of a batch may have prompts (BOS question [pauses]) of different lengths. All rows share positions:
the common prefix `prefill_len` (the shortest prompt) is prefilled in one call, then one token per
step is fed at position t — the row's own prompt token while t is inside its prompt (forced), else the
token the model predicted at t-1 (free running). So the row's answer is decoded greedily from its own
prompt, and one cache serves the whole batch.

`pred_BT[:, t]` is the argmax prediction for the token after position t, i.e. it lines up with the
batch's `targets` (inputs shifted by one): compare it with `targets` on `answer_mask`.

`greedy_continuations` is the faster path when only the first `max_new` tokens after each prompt are
wanted (generation): every prompt is prefilled in one call, then each row decodes at its own position,
`max_new` - 1 steps whatever the buffer's width (docs/benchmarks.md, "Greedy decoding vs
transformers").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import ModelConfig, Transformer, init_cache
from lime_jax.model.stack import split_cache, split_layers


def prompt_lengths(answer_mask_BT: np.ndarray) -> np.ndarray:
  """Tokens of each row's prompt: the first target that is an answer token is predicted at position
  prompt_len - 1. Rows without an answer (padding rows) count as all prompt (T)."""
  answer_mask_BT = np.asarray(answer_mask_BT) != 0
  first = np.argmax(answer_mask_BT, axis=1) + 1
  return np.where(answer_mask_BT.any(axis=1), first, answer_mask_BT.shape[1]).astype(np.int32)


# A decoding loop runs the plain stack unrolled when steps x one layer's weight bytes reach this (`unroll`).
UNROLL_MIN_BYTES = 4 * 2**30


def use_unrolled(cfg: ModelConfig, params: Any, steps: int, unroll: bool | None = None) -> bool:
  """Whether a decoding loop of `steps` steps runs the layers unrolled on per-layer weights (`_stepper`).

  A scan over layers copies each layer's weights before its matmuls, every step (XLA on CPU); unrolled,
  the weights are split once per call but the program is L layers long. On SmolLM2-135M (14 MB a
  layer), batch 8, one CPU core: ~100 instead of ~115 ms a step, ~6 s more compilation
  (docs/benchmarks.md, "Greedy decoding vs transformers"): it pays from ~300-400 steps in one call, or
  sooner when a compiled shape is reused. `unroll` True / False decides; None: unrolled when steps x
  one layer's weight bytes reach UNROLL_MIN_BYTES (~300 steps there). The plain topology only."""
  if cfg.topology != "plain":
    if unroll:
      raise ValueError(f"unroll=True needs topology 'plain', not {cfg.topology!r}.")
    return False
  if unroll is not None:
    return bool(unroll)
  layer_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params["layers"])) / cfg.num_layers
  return steps * layer_bytes >= UNROLL_MIN_BYTES


def _stepper(cfg: ModelConfig, params: Any, unrolled: bool) -> tuple[Callable, Callable[[Any], Any]]:
  """(step(tokens_BT, positions_BT, cache) -> (logits, out), the prefill's cache -> the steps' cache).

  `unrolled` (`use_unrolled`): the steps run on per-layer weights and caches, split here once, outside
  the decoding loop (lime_jax/model/stack.py `run_plain_stack`); else on the stacked layers."""
  model = Transformer(cfg)
  if not unrolled:
    return lambda tok, pos, cache: model.apply({"params": params}, tok, pos, cache=cache), lambda c: c
  # Split once per call, outside the loop; the barrier keeps XLA from moving the slices into it.
  layers = jax.lax.optimization_barrier(split_layers(params["layers"], cfg.num_layers))

  def step(tokens_BT: jax.Array, positions_BT: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    return model.apply({"params": params}, tokens_BT, positions_BT, cache=cache, layer_params=layers)

  return step, split_cache


@functools.partial(jax.jit, static_argnames=("cfg", "prefill_len", "unroll"))
def greedy_predictions(
  cfg: ModelConfig,
  params: Any,
  inputs_BT: jax.Array,
  prompt_len_B: jax.Array,
  prefill_len: int,
  unroll: bool | None = None,
) -> jax.Array:
  """Greedy next-token predictions int32 [B, T] (see the module doc), decoding with the KV cache.

  Args:
    cfg: the model config.
    params: model parameters.
    inputs_BT: the batch inputs; only each row's first prompt_len_B tokens are read.
    prompt_len_B: prompt tokens per row (>= prefill_len).
    prefill_len: static; tokens prefilled in one call (at most the shortest prompt, >= 1).
    unroll: static; the decoding steps on unrolled layers (`use_unrolled`; None: by the loop's size).
  """
  model = Transformer(cfg)
  B, T = inputs_BT.shape
  if not 1 <= prefill_len <= T:
    raise ValueError(f"prefill_len={prefill_len} must be in [1, T={T}].")
  cache = init_cache(cfg, B, T, cfg.dtype)
  positions_BP = jnp.broadcast_to(jnp.arange(prefill_len), (B, prefill_len))
  logits_BPV, out = model.apply({"params": params}, inputs_BT[:, :prefill_len], positions_BP, cache=cache)
  pred_BP = jnp.argmax(logits_BPV, axis=-1).astype(jnp.int32)
  apply, steps_cache = _stepper(cfg, params, use_unrolled(cfg, params, T - prefill_len, unroll))

  def step(carry, xs):
    cache, prev_B = carry
    t, given_B = xs
    token_B = jnp.where(t < prompt_len_B, given_B, prev_B)
    logits_B1V, out = apply(token_B[:, None], jnp.full((B, 1), t), cache)
    pred_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
    return (out.cache, pred_B), pred_B

  steps = jnp.arange(prefill_len, T)
  carry = (steps_cache(out.cache), pred_BP[:, -1])
  _, pred_SB = jax.lax.scan(step, carry, (steps, inputs_BT[:, prefill_len:].T))
  return jnp.concatenate([pred_BP, pred_SB.T], axis=1)


def decode_batch(cfg: ModelConfig, params: Any, batch: dict[str, Any]) -> np.ndarray:
  """Greedy predictions [B, T] (numpy) for an eval batch with `inputs` and `answer_mask`."""
  prompt_len_B = prompt_lengths(np.asarray(batch["answer_mask"]))
  real = np.asarray(batch.get("example_mask", np.ones(len(prompt_len_B)))) != 0
  prefill = int(prompt_len_B[real].min()) if real.any() else int(prompt_len_B.min())
  return np.asarray(
    greedy_predictions(
      cfg, params, jnp.asarray(batch["inputs"]), jnp.asarray(prompt_len_B), prefill_len=prefill
    )
  )


PREFILL_MULTIPLE = 32  # greedy_continuations prefills the longest prompt rounded up to this (few shapes)
_HIDDEN = np.iinfo(np.int32).max  # the position of a cache slot no query sees (> every query's)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "unroll"))
def _continue(
  cfg: ModelConfig,
  params: Any,
  prompt_BP: jax.Array,
  prompt_len_B: jax.Array,
  stop_S: jax.Array | None,
  max_new: int,
  unroll: bool | None,
) -> jax.Array:
  model = Transformer(cfg)
  B, P = prompt_BP.shape
  cache = init_cache(cfg, B, P + max_new - 1, cfg.dtype, slot_positions=True)
  positions_BP = jnp.broadcast_to(jnp.arange(P), (B, P))
  last_B1 = (prompt_len_B - 1)[:, None]
  logits_B1V, out = model.apply(
    {"params": params}, prompt_BP, positions_BP, cache=cache, logits_at_BK=last_B1
  )
  first_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
  # The padding after each prompt was prefilled too (unseen by the prompt, by causality): hide it from
  # the decoding steps, whose positions continue each row's prompt while the slots are shared.
  cache = dict(out.cache)
  slots_1BS = jnp.arange(cache["pos"].shape[-1])[None, None, :]
  cache["pos"] = jnp.where(slots_1BS < prompt_len_B[None, :, None], cache["pos"], _HIDDEN)
  apply, steps_cache = _stepper(cfg, params, use_unrolled(cfg, params, max_new - 1, unroll))

  def step(carry, i):
    cache, token_B = carry
    positions_B1 = (prompt_len_B + i)[:, None]
    logits_B1V, out = apply(token_B[:, None], positions_B1, cache)
    next_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
    return (out.cache, next_B), next_B

  if stop_S is None:
    _, rest_NB = jax.lax.scan(step, (steps_cache(cache), first_B), jnp.arange(max_new - 1))
    return jnp.concatenate([first_B[:, None], rest_NB.T], axis=1)

  # Early stop: the loop ends once every row has produced a stop token (the steps left are skipped).
  def running(carry):
    i, _, _, done_B, _ = carry
    return (i < max_new - 1) & ~done_B.all()

  def body(carry):
    i, cache, token_B, done_B, new_BN = carry
    (cache, next_B), _ = step((cache, token_B), i)
    new_BN = jax.lax.dynamic_update_slice(new_BN, next_B[:, None], (0, i + 1))
    return i + 1, cache, next_B, done_B | jnp.isin(next_B, stop_S), new_BN

  new_BN = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(first_B)
  carry = (jnp.int32(0), steps_cache(cache), first_B, jnp.isin(first_B, stop_S), new_BN)
  return jax.lax.while_loop(running, body, carry)[-1]


def greedy_continuations(
  cfg: ModelConfig,
  params: Any,
  inputs_BT: Any,
  prompt_len_B: Any,
  max_new: int,
  unroll: bool | None = None,
  stop_ids: Any = None,
) -> jax.Array:
  """The first `max_new` greedy tokens int32 [B, max_new] after each row's prompt, with the KV cache.

  Row b's prompt is `inputs_BT[b, :prompt_len_B[b]]` (right-padded, e.g. `probes.common.pad_rows`; the
  buffer may be wider than the prompts). All prompts are prefilled in one call over the longest one
  (rounded up to PREFILL_MULTIPLE: one compiled shape per multiple), logits formed only at each row's
  last prompt token; then `max_new` - 1 steps feed each row its own last token at its own position
  (cache slots shared, per-slot positions: `init_cache(slot_positions=True)`). Token for token this is
  greedy decoding of each prompt alone; `greedy_predictions` gives the same tokens (up to float
  rounding: the prompt is prefilled, not fed one token at a time) at `prompt_len - 1 + i`.
  Without `stop_ids` nothing stops at EOS; with them (ids, e.g. EOS and end of turn) decoding ends once
  every row has produced one, and a row's tokens after its first stop id are unspecified (0 where the
  loop ended first): cut each row there.

  Args:
    cfg: the model config.
    params: model parameters.
    inputs_BT: prompts, right-padded (host or device array).
    prompt_len_B: prompt tokens per row (>= 1; concrete: it sets the prefill's width).
    max_new: tokens generated per row (>= 1).
    unroll: the decoding steps on unrolled layers (`use_unrolled`; None: by the loop's size).
    stop_ids: token ids that end an answer (None: decode all `max_new` tokens).
  """
  if max_new < 1:
    raise ValueError(f"max_new={max_new} must be >= 1.")
  lengths_B = np.asarray(prompt_len_B)
  T = inputs_BT.shape[1]
  if lengths_B.min() < 1 or lengths_B.max() > T:
    raise ValueError(f"prompt lengths must be in [1, T={T}], got {lengths_B.min()}..{lengths_B.max()}.")
  P = min(-(-int(lengths_B.max()) // PREFILL_MULTIPLE) * PREFILL_MULTIPLE, T)
  prompt_BP = jnp.asarray(inputs_BT)[:, :P]
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  stop_S = None if stop_ids is None else jnp.asarray(sorted(int(i) for i in stop_ids), jnp.int32)
  if stop_S is not None and stop_S.size == 0:
    stop_S = None
  return _continue(cfg, params, prompt_BP, lengths_B, stop_S, max_new=max_new, unroll=unroll)


# -------------------------------------------------------------------------------------------- sampling
def filter_logits(
  logits_BV: jax.Array, temperature: float | jax.Array = 1.0, top_k: int = 0, top_p: float | jax.Array = 1.0
) -> jax.Array:
  """Logits / temperature with the tokens outside the top-k and outside the nucleus set to -inf.

  top_k (static; 0 = off) keeps the k largest logits (ties with the k-th are kept). top_p (1 = off)
  keeps the smallest set of most likely tokens whose probability mass is >= top_p (after temperature
  and top-k). temperature <= 0 is treated as 1 here (`sample_tokens` takes the argmax then).
  """
  t = jnp.asarray(temperature, jnp.float32)
  logits_BV = logits_BV.astype(jnp.float32) / jnp.where(t > 0, t, 1.0)
  neg_inf = jnp.array(-jnp.inf, jnp.float32)
  if top_k > 0:
    kth_B1 = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
  probs_BV = jax.nn.softmax(logits_BV, axis=-1)
  sorted_BV = -jnp.sort(-probs_BV, axis=-1)  # descending
  before_BV = jnp.cumsum(sorted_BV, axis=-1) - sorted_BV  # mass of the more likely tokens
  keep_BV = before_BV < jnp.asarray(top_p, jnp.float32)  # the first token is always kept
  threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(probs_BV < threshold_B1, neg_inf, logits_BV)


def sample_tokens(
  rng: jax.Array,
  logits_BV: jax.Array,
  temperature: float | jax.Array = 1.0,
  top_k: int = 0,
  top_p: float | jax.Array = 1.0,
) -> jax.Array:
  """One token per row, int32 [B]: sampled from `filter_logits`, or the argmax where temperature <= 0."""
  greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  sampled_B = jax.random.categorical(rng, filter_logits(logits_BV, temperature, top_k, top_p), axis=-1)
  return jnp.where(jnp.asarray(temperature) > 0, sampled_B.astype(jnp.int32), greedy_B)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "top_k", "unroll"))
def sample(
  cfg: ModelConfig,
  params: Any,
  prompt_BP: jax.Array,
  rng: jax.Array,
  max_new: int,
  temperature: float | jax.Array = 1.0,
  top_k: int = 0,
  top_p: float | jax.Array = 1.0,
  unroll: bool | None = None,
) -> jax.Array:
  """`max_new` tokens int32 [B, max_new] continuing each row's prompt [B, P] (all P tokens real), with
  the KV cache: one prefill call, then one call per token. Nothing stops at EOS: cut the rows after it.
  `unroll` (static): the decoding steps on unrolled layers (`use_unrolled`; None: by the loop's size).
  """
  model = Transformer(cfg)
  B, P = prompt_BP.shape
  cache = init_cache(cfg, B, P + max_new, cfg.dtype)
  positions_BP = jnp.broadcast_to(jnp.arange(P), (B, P))
  logits_BPV, out = model.apply({"params": params}, prompt_BP, positions_BP, cache=cache)
  rng, first = jax.random.split(rng)
  token_B = sample_tokens(first, logits_BPV[:, -1], temperature, top_k, top_p)
  apply, steps_cache = _stepper(cfg, params, use_unrolled(cfg, params, max_new, unroll))

  def step(carry, xs):
    cache, token_B = carry
    t, key = xs
    logits_B1V, out = apply(token_B[:, None], jnp.full((B, 1), t), cache)
    next_B = sample_tokens(key, logits_B1V[:, 0], temperature, top_k, top_p)
    return (out.cache, next_B), token_B

  keys = jax.random.split(rng, max_new)
  carry = (steps_cache(out.cache), token_B)
  _, tokens_NB = jax.lax.scan(step, carry, (jnp.arange(P, P + max_new), keys))
  return tokens_NB.T
