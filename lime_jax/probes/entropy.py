"""Entropy probe: matrix-based Renyi entropy (Seq-VCR Eq. 2; LIMe `src/analysis/entropy.py`; docs/methods.md
§6), effective rank and adjacent-layer cosine similarity, per layer, for hidden states and value vectors.

The metrics are defined once, in lime_jax/analysis/representation.py (formulas and sources there), and
re-exported here. Per layer, each sequence's tokens Z [T, d] give `matrix_entropy` under two settings:
  lime   each feature z-scored with dataset statistics (mean / std over all tokens of the eval set, per
         layer), then the per-sequence token Gram; each alpha of `ProbeOptions.entropy_alphas` but 1;
         not normalised;
  skean  centred, unit rows; alpha 1; divided by log(min(T, d)) to [0, 1];
averaged over sequences, as is `effective_rank`; the adjacent cosine is the mean over tokens of
`paired_cosine(layer l, layer l + 1)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lime_jax.analysis.representation import (
  CONVENTIONS,
  effective_rank,
  gram_spectrum,
  matrix_entropy,
  paired_cosine,
  preprocess,
  renyi_entropy,
)
from lime_jax.probes.registry import Probe, ProbeContext

# The metrics are defined in lime_jax/analysis/representation.py; they stay importable from here.
__all__ = [
  "CONVENTIONS",
  "PROBE",
  "effective_rank",
  "gram_spectrum",
  "layer_representations",
  "matrix_entropy",
  "preprocess",
  "renyi_entropy",
  "run",
]


def layer_representations(ctx: ProbeContext, num: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({'hidden': [L, B, T, D], 'value': [L, B, T, R*H]} as float32 numpy, mask [B, T]) of eval data."""
  from lime_jax.probes import common  # model and data imports stay out of the pure functions' path

  inputs_BT, mask = common.eval_tokens(ctx, num)
  cfg = common.probe_model_cfg(ctx.model_cfg)
  _, col = common.forward(ctx.params, cfg, inputs_BT, ("hidden", "value"), ctx.batch_sharding, logits=False)
  hidden = common.host(col["hidden"], np.float32)
  value = common.host(col["value"], np.float32)
  value = value.reshape(*value.shape[:3], -1)
  return {"hidden": hidden, "value": value}, mask


def run(ctx: ProbeContext) -> dict:
  opts = ctx.options
  reps, mask_BT = layer_representations(ctx, opts.num_examples)
  L = ctx.model_cfg.num_layers
  settings = [("lime", a) for a in opts.entropy_alphas if a != 1.0] + [("skean", 1.0)]
  ctx.progress.start("entropy", 2 * L)
  metrics: dict[str, Any] = {"sequences": int(mask_BT.shape[0]), "settings": [list(s) for s in settings]}
  plots, summary = [], []
  for kind, x_LBTD in reps.items():
    per: dict[str, list[float]] = {f"{c} alpha={a}": [] for c, a in settings}
    erank, cosine = [], []
    for l in range(L):
      ctx.progress.advance(f"{kind} layer {l}")
      tokens = x_LBTD[l][mask_BT]
      mean_D, std_D = tokens.mean(axis=0), tokens.std(axis=0)
      seqs = [x_LBTD[l, b][mask_BT[b]] for b in range(mask_BT.shape[0]) if mask_BT[b].sum() > 1]
      for c, a in settings:
        per[f"{c} alpha={a}"].append(
          float(np.mean([matrix_entropy(s, a, c, mean_D=mean_D, std_D=std_D) for s in seqs]))
        )
      erank.append(float(np.mean([effective_rank(s) for s in seqs])))
      if l + 1 < L:
        cosine.append(float(paired_cosine(x_LBTD[l][mask_BT], x_LBTD[l + 1][mask_BT]).mean()))
    metrics[kind] = {"entropy": per, "effective_rank": erank, "adjacent_cosine": cosine}
    layers = list(range(L))
    plots.append(
      {
        "name": f"entropy_{kind}",
        "title": f"matrix entropy per layer: {kind}",
        "xlabel": "layer",
        "ylabel": "entropy (nats; skean: normalised)",
        "series": [{"label": k, "x": layers, "y": v} for k, v in per.items()],
      }
    )
    plots.append(
      {
        "name": f"effective_rank_{kind}",
        "title": f"effective rank per layer: {kind}",
        "xlabel": "layer",
        "ylabel": "effective rank",
        "series": [{"label": kind, "x": layers, "y": erank}],
      }
    )
    if cosine:
      plots.append(
        {
          "name": f"adjacent_cosine_{kind}",
          "title": f"cosine(layer l, layer l+1): {kind}",
          "xlabel": "layer l",
          "ylabel": "mean cosine over tokens",
          "series": [{"label": kind, "x": layers[:-1], "y": cosine}],
        }
      )
    for k, v in per.items():
      summary.append([f"entropy {kind} {k}: first / last layer", f"{v[0]:.3f} / {v[-1]:.3f}"])
    summary.append([f"effective rank {kind}: first / last layer", f"{erank[0]:.2f} / {erank[-1]:.2f}"])
  return {"metrics": metrics, "plots": plots, "summary": summary}


PROBE = Probe("entropy", run, "matrix entropy, effective rank, adjacent cosine per layer")
