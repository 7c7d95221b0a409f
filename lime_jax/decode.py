"""Greedy decoding of answers with the KV cache.

Rows of a batch may have prompts (BOS question [pauses]) of different lengths. All rows share positions:
the common prefix `prefill_len` (the shortest prompt) is prefilled in one call, then one token per
step is fed at position t — the row's own prompt token while t is inside its prompt (forced), else the
token the model predicted at t-1 (free running). So the row's answer is decoded greedily from its own
prompt, and one cache serves the whole batch.

`pred_BT[:, t]` is the argmax prediction for the token after position t, i.e. it lines up with the
batch's `targets` (inputs shifted by one): compare it with `targets` on `answer_mask`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import ModelConfig, Transformer, init_cache


def prompt_lengths(answer_mask_BT: np.ndarray) -> np.ndarray:
  """Tokens of each row's prompt: the first target that is an answer token is predicted at position
  prompt_len - 1. Rows without an answer (padding rows) count as all prompt (T)."""
  answer_mask_BT = np.asarray(answer_mask_BT) != 0
  first = np.argmax(answer_mask_BT, axis=1) + 1
  return np.where(answer_mask_BT.any(axis=1), first, answer_mask_BT.shape[1]).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "prefill_len"))
def greedy_predictions(
  cfg: ModelConfig, params: Any, inputs_BT: jax.Array, prompt_len_B: jax.Array, prefill_len: int
) -> jax.Array:
  """Greedy next-token predictions int32 [B, T] (see the module doc), decoding with the KV cache.

  Args:
    cfg: the model config.
    params: model parameters.
    inputs_BT: the batch inputs; only each row's first prompt_len_B tokens are read.
    prompt_len_B: prompt tokens per row (>= prefill_len).
    prefill_len: static; tokens prefilled in one call (at most the shortest prompt, >= 1).
  """
  model = Transformer(cfg)
  B, T = inputs_BT.shape
  if not 1 <= prefill_len <= T:
    raise ValueError(f"prefill_len={prefill_len} must be in [1, T={T}].")
  cache = init_cache(cfg, B, T, cfg.dtype)
  positions_BP = jnp.broadcast_to(jnp.arange(prefill_len), (B, prefill_len))
  logits_BPV, out = model.apply({"params": params}, inputs_BT[:, :prefill_len], positions_BP, cache=cache)
  pred_BP = jnp.argmax(logits_BPV, axis=-1).astype(jnp.int32)

  def step(carry, xs):
    cache, prev_B = carry
    t, given_B = xs
    token_B = jnp.where(t < prompt_len_B, given_B, prev_B)
    logits_B1V, out = model.apply({"params": params}, token_B[:, None], jnp.full((B, 1), t), cache=cache)
    pred_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
    return (out.cache, pred_B), pred_B

  steps = jnp.arange(prefill_len, T)
  _, pred_SB = jax.lax.scan(step, (out.cache, pred_BP[:, -1]), (steps, inputs_BT[:, prefill_len:].T))
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


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "top_k"))
def sample(
  cfg: ModelConfig,
  params: Any,
  prompt_BP: jax.Array,
  rng: jax.Array,
  max_new: int,
  temperature: float | jax.Array = 1.0,
  top_k: int = 0,
  top_p: float | jax.Array = 1.0,
) -> jax.Array:
  """`max_new` tokens int32 [B, max_new] continuing each row's prompt [B, P] (all P tokens real), with
  the KV cache: one prefill call, then one call per token. Nothing stops at EOS: cut the rows after it.
  """
  model = Transformer(cfg)
  B, P = prompt_BP.shape
  cache = init_cache(cfg, B, P + max_new, cfg.dtype)
  positions_BP = jnp.broadcast_to(jnp.arange(P), (B, P))
  logits_BPV, out = model.apply({"params": params}, prompt_BP, positions_BP, cache=cache)
  rng, first = jax.random.split(rng)
  token_B = sample_tokens(first, logits_BPV[:, -1], temperature, top_k, top_p)

  def step(carry, xs):
    cache, token_B = carry
    t, key = xs
    logits_B1V, out = model.apply({"params": params}, token_B[:, None], jnp.full((B, 1), t), cache=cache)
    next_B = sample_tokens(key, logits_B1V[:, 0], temperature, top_k, top_p)
    return (out.cache, next_B), token_B

  keys = jax.random.split(rng, max_new)
  _, tokens_NB = jax.lax.scan(step, (out.cache, token_B), (jnp.arange(P, P + max_new), keys))
  return tokens_NB.T
