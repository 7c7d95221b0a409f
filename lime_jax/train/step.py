"""The train state and the pure train / eval step functions (jitted by the trainer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lime_jax.losses import token_metrics
from lime_jax.model import Transformer

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint restores besides the data iterator."""

  step: jax.Array
  params: Any
  opt_state: Any


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def loss_fn(params: Any, model: Transformer, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CE on `loss_mask` plus the stack's auxiliary losses (each already weighted; e.g. Seq-VCR's
  `aux/seq_vcr_variance` and `aux/seq_vcr_covariance`, logged next to `ce`)."""
  logits_BTV, out = model.apply(
    {"params": params},
    batch["inputs"],
    batch.get("positions"),
    regularize=True,
    answer_mask_BT=batch.get("answer_mask"),
  )
  ce = token_metrics.masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"])
  aux_total = sum(out.aux.values(), jnp.zeros((), jnp.float32))
  stats = {"ce": ce, **{f"aux/{k}": v for k, v in out.aux.items()}}
  stats.update(token_metrics.answer_metrics(logits_BTV, batch["targets"], batch["answer_mask"]))
  return ce + aux_total, stats


def make_train_step(
  model: Transformer, optimizer: optax.GradientTransformation, lr_fn: Callable[[jax.Array], jax.Array]
) -> Callable[[TrainState, Batch], tuple]:
  """Returns the pure `train_step(state, batch) -> (state, metrics)`."""

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, model, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    answers = jnp.maximum(stats.pop("answer_tokens"), 1.0)
    examples = jnp.maximum(stats.pop("examples"), 1.0)
    out = {
      "loss": loss,
      "learning_rate": lr_fn(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(state.params),
      "update_norm": optax.tree.norm(updates),
      "token_accuracy": stats.pop("correct_tokens") / answers,
      "exact_match": stats.pop("exact_matches") / examples,
      **stats,
    }
    return new_state, out

  return train_step


def make_eval_step(model: Transformer) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """Returns `eval_step(params, batch) -> sums` (loss sums and answer metrics; no averaging)."""

  def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
    logits_BTV, _ = model.apply({"params": params}, batch["inputs"], batch.get("positions"))
    mask_BT = batch["loss_mask"] * batch["example_mask"][:, None]
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    sums = token_metrics.answer_metrics(
      logits_BTV, batch["targets"], batch["answer_mask"] * mask_BT, batch["example_mask"]
    )
    sums["ce_sum"] = jnp.sum(ce_BT * mask_BT)
    sums["ce_tokens"] = jnp.sum(mask_BT)
    return sums

  return eval_step
