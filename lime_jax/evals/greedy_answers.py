"""Held-out evaluation by greedy decoding (`config.eval.greedy`): exact match, per-answer-position
accuracy, and the matrix entropy of the Seq-VCR layer's representations.

- `greedy_exact_match`: share of examples whose whole greedily decoded answer (with the final EOS)
  equals the target (lime_jax/model/decode.py decodes from each row's own question + pauses).
- `greedy_token_accuracy`: share of answer tokens right under free-running decoding.
- `greedy_pos_acc/KK`: accuracy at answer position KK (0 = first answer token), over the examples whose
  answer has that position. The paper reports that the middle digits (most carries) fail.
- `entropy`: mean over examples of the matrix entropy of the output of block `model.seq_vcr.layers[0]`
  (the regularised layer; final by default, also measured when Seq-VCR is off) over the example's real
  (non-PAD) positions, under teacher forcing; see `matrix_entropy`. `entropy_normalized` divides it by
  log(min(T_real, d)), its maximum.
- `entropy_layer/LL`: the same for the output of every block LL (0 = first).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.data.tokenizer import PAD_ID
from lime_jax.model import ModelConfig, Transformer, decode


def matrix_entropy(z_BTD: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Per-example matrix entropy [B] (nats) of the representation matrix Z (masked rows, [T, d]).

  With p_i = s_i^2 / sum_j s_j^2 from the singular values s of Z (the eigenvalues of the Gram Z Z^T
  normalised to trace 1), the entropy is -sum_i p_i log p_i (Rényi order 1; Skean et al.'s prompt
  entropy, used by the Seq-VCR paper). 0 for rank-one Z (collapse); log(rank) for a flat spectrum.
  Masked-out rows are zeroed, which leaves the non-zero singular values of the real rows unchanged.
  Batched and jittable; equals lime_jax/analysis/representation.py `matrix_entropy(z, alpha=1,
  convention='none')` (numpy, one example; tested), which the offline probes use.
  """
  z_BTD = jnp.where(mask_BT[..., None] != 0, z_BTD.astype(jnp.float32), 0.0)
  s_BK = jnp.linalg.svd(z_BTD, compute_uv=False)
  p_BK = jnp.square(s_BK) / jnp.maximum(jnp.sum(jnp.square(s_BK), axis=-1, keepdims=True), 1e-30)
  return -jnp.sum(jnp.where(p_BK > 0, p_BK * jnp.log(jnp.where(p_BK > 0, p_BK, 1.0)), 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _layer_entropies(cfg: ModelConfig, params: Any, inputs_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(entropy [L, B] of every block's output, its maximum log(min(T_real, d)) [B])."""
  _, out = Transformer(cfg).apply({"params": params}, inputs_BT, collect=("hidden",))
  mask_BT = (inputs_BT != PAD_ID).astype(jnp.float32)
  z_LBTD = out.collected["hidden"]
  bound_B = jnp.log(jnp.maximum(jnp.minimum(jnp.sum(mask_BT, axis=1), z_LBTD.shape[-1]), 2.0))
  return jax.vmap(lambda z_BTD: matrix_entropy(z_BTD, mask_BT))(z_LBTD), bound_B


def generation_sums(
  pred_BT: np.ndarray, batch: dict[str, np.ndarray], max_positions: int
) -> dict[str, np.ndarray]:
  """Counts of one batch: exact matches, right answer tokens, and per answer position right / seen."""
  targets, answer = np.asarray(batch["targets"]), np.asarray(batch["answer_mask"]) != 0
  real_B = np.asarray(batch.get("example_mask", answer.any(axis=1))) != 0
  answer = answer & real_B[:, None]
  correct = (pred_BT == targets) & answer
  offset_BT = np.cumsum(answer, axis=1) - 1  # answer position of each answer target
  pos_right, pos_seen = np.zeros(max_positions), np.zeros(max_positions)
  np.add.at(pos_right, offset_BT[correct], 1.0)
  np.add.at(pos_seen, offset_BT[answer], 1.0)
  exact_B = (correct.sum(axis=1) == answer.sum(axis=1)) & real_B
  return {
    "exact": float(exact_B.sum()),
    "examples": float(real_B.sum()),
    "right": float(correct.sum()),
    "tokens": float(answer.sum()),
    "pos_right": pos_right,
    "pos_seen": pos_seen,
  }


def evaluate_generation(
  cfg: ModelConfig, params: Any, batches: list[dict[str, np.ndarray]]
) -> dict[str, float]:
  """Greedy exact match, token and per-position accuracy, and layer entropy over eval batches."""
  T = int(np.asarray(batches[0]["inputs"]).shape[1])
  totals: dict[str, Any] = {}
  ent_sum = ent_norm_sum = 0.0
  ent_layer_sum = np.zeros(cfg.num_layers)
  layer = int(cfg.seq_vcr.layers[0]) % cfg.num_layers  # the Seq-VCR layer (the final block by default)
  for batch in batches:
    sums = generation_sums(decode.decode_batch(cfg, params, batch), batch, T)
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + v
    ent_LB, bound_B = jax.device_get(_layer_entropies(cfg, params, jnp.asarray(batch["inputs"])))
    ent_B = ent_LB[layer]
    real_B = np.asarray(batch.get("example_mask", np.ones(len(ent_B)))) != 0
    ent_layer_sum += ent_LB[:, real_B].sum(axis=1)
    ent_sum += float(np.sum(ent_B[real_B]))
    ent_norm_sum += float(np.sum(ent_B[real_B] / bound_B[real_B]))
  n = max(totals["examples"], 1.0)
  result = {
    "greedy_exact_match": totals["exact"] / n,
    "greedy_token_accuracy": totals["right"] / max(totals["tokens"], 1.0),
    "entropy": ent_sum / n,
    "entropy_normalized": ent_norm_sum / n,
  }
  for l in range(cfg.num_layers):
    result[f"entropy_layer/{l:02d}"] = float(ent_layer_sum[l] / n)
  for k in np.nonzero(totals["pos_seen"])[0]:
    result[f"greedy_pos_acc/{k:02d}"] = float(totals["pos_right"][k] / totals["pos_seen"][k])
  return result
