"""The logit lens: the final norm and unembedding applied to every layer's residual stream."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.inspect.cache import run_with_cache
from lime_jax.inspect.loading import Model
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.transformer import unembed


@dataclasses.dataclass(frozen=True)
class LogitLens:
  """Per layer l (the residual stream after layer l, `hidden`) and token position t: the top-k tokens
  `top_ids_LBTK` with their probabilities `top_probs_LBTK`, and for `target_ids_BT` the target's
  probability `target_prob_LBT` and rank `target_rank_LBT` (0 = the most likely token; None without
  targets). The last layer's reading is the model's own output distribution."""

  top_ids_LBTK: np.ndarray
  top_probs_LBTK: np.ndarray
  target_ids_BT: np.ndarray | None = None
  target_prob_LBT: np.ndarray | None = None
  target_rank_LBT: np.ndarray | None = None


@functools.partial(jax.jit, static_argnames=("cfg", "top_k"))
def _read(params, cfg: ModelConfig, hidden_LBTD, target_ids_BT, top_k: int):
  """Layer by layer (lax.map: one [B, T, V] of logits at a time), the top-k and the target's reading."""

  def one_layer(h_BTD):
    logp_BTV = jax.nn.log_softmax(unembed(params, cfg, h_BTD), axis=-1)
    top_logp_BTK, top_ids_BTK = jax.lax.top_k(logp_BTV, top_k)
    target_logp_BT = jnp.take_along_axis(logp_BTV, target_ids_BT[..., None], axis=-1)[..., 0]
    rank_BT = jnp.sum(logp_BTV > target_logp_BT[..., None], axis=-1)
    return top_ids_BTK, jnp.exp(top_logp_BTK), jnp.exp(target_logp_BT), rank_BT

  return jax.lax.map(one_layer, hidden_LBTD)


def logit_lens(model: Model, tokens_BT: Any, target_ids_BT: Any = None, top_k: int = 5) -> LogitLens:
  """The logit lens of `model` on `tokens_BT` (int [B, T] or [T]): `LogitLens`. `target_ids_BT` (same
  shape; e.g. the next tokens) adds each target's probability and rank per layer."""
  tokens_BT = np.asarray(tokens_BT, np.int32)
  if tokens_BT.ndim == 1:
    tokens_BT = tokens_BT[None]
  if not 1 <= top_k <= model.cfg.vocab_size:
    raise ValueError(f"top_k={top_k} must be in [1, vocab_size={model.cfg.vocab_size}].")
  targets = target_ids_BT is not None
  if targets:
    target_ids_BT = np.asarray(target_ids_BT, np.int32).reshape(tokens_BT.shape)
  _, acts = run_with_cache(model, tokens_BT, names=("hidden",), logits=False)
  got = _read(
    model.params,
    model.cfg,
    acts["hidden"],
    jnp.asarray(target_ids_BT if targets else np.zeros_like(tokens_BT)),
    top_k=top_k,
  )
  ids, probs, target_prob, rank = (np.asarray(x) for x in got)
  if not targets:
    return LogitLens(ids, probs)
  return LogitLens(ids, probs, target_ids_BT, target_prob, rank)


def plot_logit_lens(
  lens: LogitLens, path: str, token_text: Callable[[int], str] | None = None, row: int = 0
) -> str:
  """A heatmap (layers x positions) of batch row `row`: the target's probability where targets were
  given, else the top-1 probability, each cell labelled with the layer's top-1 token (`token_text`: id
  -> its text, e.g. `lambda i: model.decode([i])`; else the ids). Saved to `path` (PNG)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  targets = lens.target_prob_LBT is not None
  value_LT = lens.target_prob_LBT[:, row] if targets else lens.top_probs_LBTK[:, row, :, 0]
  top_LT = lens.top_ids_LBTK[:, row, :, 0]
  L, T = value_LT.shape
  fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * T + 1.5), max(3.0, 0.35 * L + 1.0)))
  image = ax.imshow(value_LT, aspect="auto", origin="lower", vmin=0.0, vmax=1.0, cmap="viridis")
  for l in range(L):
    for t in range(T):
      label = repr(token_text(int(top_LT[l, t])))[1:-1] if token_text is not None else str(top_LT[l, t])
      ax.text(t, l, label[:8], ha="center", va="center", fontsize=6, color="white")
  ax.set_xlabel("position")
  ax.set_ylabel("layer")
  if targets and token_text is not None:
    ticks = [repr(token_text(int(i)))[1:-1][:8] for i in lens.target_ids_BT[row]]
    ax.set_xticks(range(T), ticks, rotation=60, fontsize=6)
    ax.set_xlabel("position (its target token)")
  fig.colorbar(image, ax=ax, label="target probability" if targets else "top-1 probability")
  ax.set_title("logit lens (cells: each layer's top-1 token)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
