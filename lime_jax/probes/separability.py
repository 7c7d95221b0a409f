"""Value separability (LIMe; docs/methods.md §6): can a linear classifier tell apart the representations of a
few close tokens (default is / are / was / were for text models) at each layer?

Representations are gathered at every occurrence of each class string in the eval data (the position
of its last token; for multi-character strings the neighbours must not be letters or digits, so `is`
does not match inside `this`). Per layer, for value vectors and hidden states: a softmax-regression
classifier, features z-scored with the training fold's statistics, trained 1 epoch with Adam lr 1e-2,
batch 64, 5-fold cross-validation (folds from a fixed permutation); mean +- std of the held-out accuracy.
Synthetic tasks default to their first four digits as classes (`--separability_tokens`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lime_jax.data import tasks
from lime_jax.probes import common
from lime_jax.probes.registry import Probe, ProbeContext

TEXT_DEFAULT = ("is", "are", "was", "were")
FOLDS, EPOCHS, LR, BATCH = 5, 1, 1e-2, 64


def default_classes(ctx: ProbeContext) -> tuple[str, ...]:
  if ctx.options.separability_tokens:
    return tuple(ctx.options.separability_tokens)
  if ctx.pretrained or ctx.config.data.get("tokenizer"):  # subword tokenizers carry the leading space
    return tuple(f" {w}" for w in TEXT_DEFAULT)
  if ctx.config.data.task == tasks.TEXT_TASK:
    return TEXT_DEFAULT
  return tuple(d for d in "0123456789" if common.encodable(ctx.tokenizer, d))[:4]


def find_occurrences(
  inputs_BT: np.ndarray, mask_BT: np.ndarray, tokenizer: Any, classes
) -> list[tuple[int, int, int]]:
  """(row, position of the last token, class index) of every occurrence of every class string."""
  found = []

  def word_edge(i, at_end: bool) -> bool:  # does token i's text end (start) with a letter or digit?
    if int(i) < 16:  # the char / byte tokenizers' specials
      return False
    text_i = tokenizer.decode([int(i)])
    return (text_i[-1:] if at_end else text_i[:1]).isalnum()

  for c, text in enumerate(classes):
    ids = np.asarray(tokenizer.encode(text))
    k = len(ids)
    for b in range(inputs_BT.shape[0]):
      row = inputs_BT[b]
      for p in range(k - 1, inputs_BT.shape[1]):
        if not mask_BT[b, p] or not np.array_equal(row[p - k + 1 : p + 1], ids):
          continue
        # a class with a leading space (subword tokenizers) is delimited on the left by it
        if len(text) > 1 and (
          (text[0].isalnum() and p - k >= 0 and word_edge(row[p - k], True))
          or (p + 1 < len(row) and mask_BT[b, p + 1] and word_edge(row[p + 1], False))
        ):
          continue
        found.append((b, p, c))
  return found


def _train_eval(x_tr, y_tr, x_te, y_te, num_classes: int, key) -> jax.Array:
  """One fold: 1 epoch of Adam on softmax regression; held-out accuracy."""
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
  x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
  params = {"w": jnp.zeros((x_tr.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  opt = optax.adam(LR)
  state = opt.init(params)
  n = x_tr.shape[0]
  steps = -(-n // BATCH)
  perm = jax.random.permutation(key, n)
  idx = jnp.concatenate([perm, perm[: steps * BATCH - n]]).reshape(steps, BATCH)
  valid = (jnp.arange(steps * BATCH) < n).reshape(steps, BATCH).astype(jnp.float32)

  def loss(p, xb, yb, wb):
    ce = optax.softmax_cross_entropy_with_integer_labels(xb @ p["w"] + p["b"], yb)
    return jnp.sum(ce * wb) / jnp.maximum(wb.sum(), 1.0)

  def step(carry, xs):
    p, s = carry
    ib, wb = xs
    g = jax.grad(loss)(p, x_tr[ib], y_tr[ib], wb)
    updates, s = opt.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.lax.scan(step, (params, state), (idx, valid))
  return jnp.mean(jnp.argmax(x_te @ params["w"] + params["b"], -1) == y_te)


def cross_validated_accuracy(
  x_ND: np.ndarray, y_N: np.ndarray, num_classes: int, seed: int = 0
) -> tuple[float, float]:
  """Mean and std over 5 folds of the held-out accuracy of the linear probe."""
  perm = np.random.default_rng(seed).permutation(len(y_N))
  folds = np.array_split(perm, FOLDS)
  accs = []
  fn = jax.jit(_train_eval, static_argnums=(4,))
  for k in range(FOLDS):
    test = folds[k]
    train = np.concatenate([folds[j] for j in range(FOLDS) if j != k])
    accs.append(
      float(
        fn(
          jnp.asarray(x_ND[train]),
          jnp.asarray(y_N[train]),
          jnp.asarray(x_ND[test]),
          jnp.asarray(y_N[test]),
          num_classes,
          jax.random.key(seed + k),
        )
      )
    )
  return float(np.mean(accs)), float(np.std(accs))


def run(ctx: ProbeContext) -> dict:
  classes = default_classes(ctx)
  num = max(ctx.options.num_examples, 64)
  inputs_BT, mask_BT = common.eval_tokens(ctx, num)
  occ = find_occurrences(inputs_BT, mask_BT, ctx.tokenizer, classes)
  counts = [sum(1 for o in occ if o[2] == c) for c in range(len(classes))]
  present = [c for c in range(len(classes)) if counts[c] >= FOLDS]
  if len(present) < 2:
    reason = (
      f"separability skipped: fewer than two of the classes {classes} occur >= {FOLDS} times in "
      f"{num} eval sequences (counts {counts}); set --separability_tokens."
    )
    return {"metrics": {"skipped": reason, "classes": list(classes), "counts": counts}, "notes": [reason]}
  occ = [o for o in occ if o[2] in present]
  rows, pos = np.array([o[0] for o in occ]), np.array([o[1] for o in occ])
  y = np.array([present.index(o[2]) for o in occ])
  cfg = common.probe_model_cfg(ctx.model_cfg)
  _, col = common.forward(ctx.params, cfg, inputs_BT, ("hidden", "value"), ctx.batch_sharding, logits=False)
  L = ctx.model_cfg.num_layers
  ctx.progress.start("separability", 2 * L)
  metrics: dict[str, Any] = {
    "classes": [classes[c] for c in present],
    "counts": [counts[c] for c in present],
    "folds": FOLDS,
    "epochs": EPOCHS,
    "lr": LR,
    "batch": BATCH,
  }
  series = []
  for kind in ("value", "hidden"):
    x = common.host(col[kind], np.float32)
    x = x.reshape(*x.shape[:3], -1)[:, rows, pos]  # [L, N, F]
    mean, std = [], []
    for l in range(L):
      ctx.progress.advance(f"{kind} layer {l}")
      m, s = cross_validated_accuracy(x[l], y, len(present), ctx.options.seed)
      mean.append(m)
      std.append(s)
    metrics[kind] = {"accuracy_mean": mean, "accuracy_std": std}
    series.append(
      {
        "label": kind,
        "x": list(range(L)),
        "y": mean,
        "y_lo": [m - s for m, s in zip(mean, std)],
        "y_hi": [m + s for m, s in zip(mean, std)],
      }
    )
  plot = {
    "name": "separability",
    "title": f"linear separability of {', '.join(metrics['classes'])}",
    "xlabel": "layer",
    "ylabel": "5-fold accuracy (mean +- std)",
    "ylim": [0, 1.02],
    "series": series,
    "hlines": [{"y": 1.0 / len(present), "label": "chance"}],
  }
  summary = [
    [
      f"separability {k}: first / last layer",
      f"{metrics[k]['accuracy_mean'][0]:.3f} / {metrics[k]['accuracy_mean'][-1]:.3f}",
    ]
    for k in ("value", "hidden")
  ]
  return {"metrics": metrics, "plots": [plot], "summary": summary}


PROBE = Probe("separability", run, "5-fold linear probe on values / hidden states at chosen tokens")
