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
def greedy_predictions(cfg: ModelConfig, params: Any, inputs_BT: jax.Array, prompt_len_B: jax.Array,
                       prefill_len: int) -> jax.Array:
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
  return np.asarray(greedy_predictions(cfg, params, jnp.asarray(batch["inputs"]),
                                       jnp.asarray(prompt_len_B), prefill_len=prefill))
