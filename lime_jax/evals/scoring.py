"""Batched log-likelihood scoring of token sequences (lm-evaluation-harness's `loglikelihood` requests).

A request is a token row `ids` (context + continuation, at most the model's length + 1 tokens) and the
length `n` of its continuation: its score is the summed log-probability of the last `n` tokens, each
given the tokens before it, and whether greedy decoding would produce all of them. Rows are sorted by
length and scored `batch_size` at a time, right-padded to a few widths (`bucket`), with the logits formed
only at the continuation's positions (`Transformer(logits_at_BK=...)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import ModelConfig, Transformer

FINE_BUCKETS_FROM = 512  # above this, `bucket` rounds to 1/16 of the next power of two instead of to it

# (params, inputs int32 [B, T], positions int32 [B, K], targets int32 [B, K]) -> (log p float32 [B, K],
# target is the argmax bool [B, K]).
ScoreFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def bucket(n: int, minimum: int = 16) -> int:
  """The padded length of an n-token batch (few compiles, little padding): the next power of two >=
  max(n, minimum) up to FINE_BUCKETS_FROM; above it, n rounded up to a multiple of 1/16 of that power of
  two (at most 12.5% padding, 8 shapes per octave: 2668 tokens -> 2816, not 4096)."""
  n = max(int(n), minimum)
  power = 1 << max(n - 1, 0).bit_length()
  if power <= FINE_BUCKETS_FROM:
    return power
  step = power // 16
  return -(-n // step) * step


def token_scorer(cfg: ModelConfig) -> ScoreFn:
  """The jitted `ScoreFn` of a model: log-probabilities of `targets_BK`, predicted at input positions
  `at_BK` (logits formed there only), and whether each is the argmax."""
  model = Transformer(cfg)

  def score(
    params: Any, inputs_BT: jax.Array, at_BK: jax.Array, targets_BK: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    logits_BKV, _ = model.apply({"params": params}, inputs_BT, logits_at_BK=at_BK)
    logp_BKV = jax.nn.log_softmax(logits_BKV.astype(jnp.float32), axis=-1)
    logp_BK = jnp.take_along_axis(logp_BKV, targets_BK[..., None], axis=-1)[..., 0]
    return logp_BK, jnp.argmax(logits_BKV, axis=-1) == targets_BK

  return jax.jit(score)


def continuation_scores(
  score_fn: ScoreFn,
  params: Any,
  rows: Sequence[tuple[Sequence[int], int]],
  pad_id: int,
  batch_size: int = 16,
  max_width: int | None = None,
) -> list[tuple[float, bool]]:
  """(summed log-probability, greedy) of each row's last `n` tokens given the ones before, for rows
  `(ids, n)` with 1 <= n < len(ids). Rows are scored longest first, `batch_size` at a time (a short last
  batch repeats its last row), padded to `bucket` widths, at most `max_width` (the model's length: rows
  must fit it); the results come back in the rows' order."""
  for ids, n in rows:
    if not 1 <= n < len(ids):
      raise ValueError(f"a request of {len(ids)} tokens cannot score a continuation of {n} tokens.")
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
  out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    picked = [rows[i] for i in chunk] + [rows[chunk[-1]]] * (batch_size - len(chunk))
    longest = max(len(ids) for ids, _ in picked) - 1
    if max_width is not None and longest > max_width:
      raise ValueError(f"a request of {longest + 1} tokens exceeds the model's {max_width} positions + 1.")
    width = min(bucket(longest), max_width or bucket(longest))
    num = bucket(max(n for _, n in picked), minimum=4)
    inputs_BT = np.full((batch_size, width), pad_id, np.int32)
    at_BK = np.zeros((batch_size, num), np.int32)
    targets_BK = np.zeros((batch_size, num), np.int32)
    for b, (ids, n) in enumerate(picked):
      inputs_BT[b, : len(ids) - 1] = ids[:-1]
      at_BK[b, :n] = np.arange(len(ids) - 1 - n, len(ids) - 1)  # inputs whose next token is scored
      targets_BK[b, :n] = ids[-n:]
    logp_BK, greedy_BK = jax.device_get(score_fn(params, inputs_BT, at_BK, targets_BK))
    for b, i in enumerate(chunk):
      n = rows[i][1]
      out[i] = (float(np.sum(logp_BK[b, :n], dtype=np.float64)), bool(np.all(greedy_BK[b, :n])))
  return out
