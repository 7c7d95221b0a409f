"""AdamW with parameter groups, linear warmup + cosine decay, global-norm clipping.

Groups (by parameter path):
  - 'router': LIMe routing weights — lr x `train.router_lr_multiplier` (10x in the paper), no decay;
  - 'no_decay': norms (`scale`) and embeddings (`embed`, `unembed`) — no weight decay;
  - 'decay': every other matrix — decoupled weight decay `train.weight_decay`.
All groups share the schedule's shape; a group's multiplier scales its learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

GROUPS = ("decay", "no_decay", "router")


def param_group(path: tuple[str, ...]) -> str:
  """The optimizer group of the parameter at `path` (a tuple of dict keys)."""
  if "router" in path:
    return "router"
  if path[-1] in ("scale", "embed", "unembed"):
    return "no_decay"
  return "decay"


def param_groups(params: Any) -> Any:
  """A pytree like `params` holding each leaf's group label."""
  return jax.tree_util.tree_map_with_path(
    lambda kp, _: param_group(tuple(str(getattr(k, "key", k)) for k in kp)), params
  )


def lr_schedule(train_cfg: ml_collections.ConfigDict) -> Callable[[Any], Any]:
  """Linear warmup from 0 to `learning_rate`, then cosine to `learning_rate * min_lr_ratio`."""
  peak = train_cfg.learning_rate
  warmup = max(int(train_cfg.warmup_steps), 0)
  decay_steps = max(int(train_cfg.num_steps) - warmup, 1)
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak, max(warmup, 1)),
      optax.cosine_decay_schedule(peak, decay_steps, alpha=train_cfg.min_lr_ratio),
    ],
    boundaries=[warmup],
  )


def lr_multipliers(train_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """Per-group learning-rate multipliers (the hook that LIMe's router uses)."""
  return {"decay": 1.0, "no_decay": 1.0, "router": float(train_cfg.router_lr_multiplier)}


def make_optimizer(train_cfg: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """AdamW per group under one global-norm clip."""
  schedule = lr_schedule(train_cfg)
  multipliers = lr_multipliers(train_cfg)

  def group_tx(group: str) -> optax.GradientTransformation:
    decay = train_cfg.weight_decay if group == "decay" else 0.0
    scaled = lambda step, m=multipliers[group]: m * schedule(step)
    return optax.adamw(scaled, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps, weight_decay=decay)

  labels = param_groups(params)
  present = sorted(set(jax.tree_util.tree_leaves(labels)))
  tx = optax.multi_transform({g: group_tx(g) for g in present}, labels)
  if train_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), tx)
  return tx
