"""Pure loss and metric functions over logits, targets and masks, and the language-model metrics of
summed cross-entropy (perplexity, bits per byte)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def masked_cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Mean token cross-entropy over positions where mask_BT is 1 (fp32)."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), targets_BT)
  mask_BT = mask_BT.astype(jnp.float32)
  return jnp.sum(ce_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def answer_metrics(
  logits_BTV: jax.Array,
  targets_BT: jax.Array,
  answer_mask_BT: jax.Array,
  example_mask_B: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Sums for token accuracy and exact match of the answer under teacher forcing.

  An answer is an exact match when the argmax is right at every answer position. By induction this is
  the same as greedy decoding producing the whole answer, so it is the exact-match metric of greedy
  generation, computed in one forward pass. Returns sums (divide by the counts after reduction).
  """
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  answer_mask_BT = answer_mask_BT.astype(jnp.float32)
  if example_mask_B is None:
    example_mask_B = (jnp.sum(answer_mask_BT, axis=1) > 0).astype(jnp.float32)
  wrong_B = jnp.sum((1.0 - correct_BT) * answer_mask_BT, axis=1)
  exact_B = (wrong_B == 0).astype(jnp.float32) * example_mask_B
  return {
    "correct_tokens": jnp.sum(correct_BT * answer_mask_BT),
    "answer_tokens": jnp.sum(answer_mask_BT),
    "exact_matches": jnp.sum(exact_B),
    "examples": jnp.sum(example_mask_B),
  }


def lm_metrics(ce_sum: float, ce_tokens: float, num_bytes: float) -> dict[str, float]:
  """Perplexity, bits per byte and bytes per token from summed CE (nats), tokens and bytes."""
  ce = ce_sum / max(ce_tokens, 1.0)
  return {
    "perplexity": float(math.exp(min(ce, 700.0))),
    "bits_per_byte": float(ce_sum / math.log(2) / max(num_bytes, 1.0)),
    "bytes_per_token": float(num_bytes / max(ce_tokens, 1.0)),
  }
