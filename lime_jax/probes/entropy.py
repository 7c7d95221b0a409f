"""Matrix-based Renyi entropy (Seq-VCR Eq. 2; LIMe `src/analysis/entropy.py`; docs/methods.md §6), effective
rank
and adjacent-layer cosine similarity, per layer, for hidden states and value vectors.

For a representation Z [T, d]: K = Z Z^T (float64, on host), p_i = lambda_i(K) / tr(K),
S_alpha = log(sum p_i^alpha) / (1 - alpha), alpha = 1 -> Shannon -sum p log p. Conventions:
  lime   z-score each feature with dataset statistics (mean / std over all tokens of the eval set, per
         layer), then the per-sequence token Gram; alpha 0.5 or 0.99; not normalised;
  skean  centre (subtract the sequence's mean row) and L2-normalise rows; alpha 1; normalised by
         log(min(T, d)) to [0, 1];
  none   Z as is.
`matrix_entropy(x_TD, alpha, convention)` is the pure entry point other code imports. Effective rank
(Roy & Vetterli 2007): exp of the Shannon entropy of the normalised singular values of Z.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lime_jax.probes.registry import Probe, ProbeContext

CONVENTIONS = ("lime", "skean", "none")
_EPS = 1e-12


def preprocess(
  x_TD: np.ndarray,
  convention: str = "none",
  mean_D: np.ndarray | None = None,
  std_D: np.ndarray | None = None,
) -> np.ndarray:
  """Z for the Gram matrix (float64). 'lime' without statistics uses the sequence's own."""
  z = np.asarray(x_TD, np.float64)
  if convention == "lime":
    mean_D = z.mean(axis=0) if mean_D is None else np.asarray(mean_D, np.float64)
    std_D = z.std(axis=0) if std_D is None else np.asarray(std_D, np.float64)
    return (z - mean_D) / (std_D + 1e-6)
  if convention == "skean":
    z = z - z.mean(axis=0, keepdims=True)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), _EPS)
  if convention == "none":
    return z
  raise ValueError(f"entropy convention {convention!r} is unknown; use one of {CONVENTIONS}.")


def renyi_entropy(p: np.ndarray, alpha: float) -> float:
  """Renyi entropy of a probability vector (natural log); alpha = 1 is Shannon."""
  p = p[p > _EPS]
  if abs(alpha - 1.0) < 1e-9:
    return float(-(p * np.log(p)).sum())
  return float(np.log((p**alpha).sum()) / (1.0 - alpha))


def gram_spectrum(z_TD: np.ndarray) -> np.ndarray:
  """Eigenvalue distribution p_i = lambda_i / tr of K = Z Z^T (float64, negatives clipped)."""
  z = np.asarray(z_TD, np.float64)
  lam = np.clip(np.linalg.eigvalsh(z @ z.T), 0.0, None)
  return lam / max(lam.sum(), _EPS)


def matrix_entropy(
  x_TD: np.ndarray,
  alpha: float = 1.0,
  convention: str = "none",
  normalize: bool | None = None,
  mean_D: np.ndarray | None = None,
  std_D: np.ndarray | None = None,
) -> float:
  """Matrix-based Renyi entropy of x [T, d] (see the module doc). `normalize` (default: True for
  'skean' only) divides by log(min(T, d))."""
  x_TD = np.asarray(x_TD)
  S = renyi_entropy(gram_spectrum(preprocess(x_TD, convention, mean_D, std_D)), alpha)
  if normalize if normalize is not None else convention == "skean":
    S /= max(np.log(min(x_TD.shape)), _EPS)
  return S


def effective_rank(x_TD: np.ndarray) -> float:
  """exp(Shannon entropy of sigma_i / sum sigma) of x [T, d] (float64)."""
  s = np.linalg.svd(np.asarray(x_TD, np.float64), compute_uv=False)
  return float(np.exp(renyi_entropy(s / max(s.sum(), _EPS), 1.0)))


def layer_representations(ctx: ProbeContext, num: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({'hidden': [L, B, T, D], 'value': [L, B, T, R*H]} as float32 numpy, mask [B, T]) of eval data."""
  from lime_jax.probes import common  # model and data imports stay out of the pure functions' path

  inputs_BT, mask = common.eval_tokens(ctx, num)
  cfg = common.probe_model_cfg(ctx.model_cfg)
  _, col = common.forward(ctx.params, cfg, inputs_BT, ("hidden", "value"), ctx.batch_sharding, logits=False)
  hidden = np.asarray(col["hidden"], np.float32)
  value = np.asarray(col["value"], np.float32)
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
        a_ND, b_ND = x_LBTD[l][mask_BT].astype(np.float64), x_LBTD[l + 1][mask_BT].astype(np.float64)
        norms_N = np.linalg.norm(a_ND, axis=-1) * np.linalg.norm(b_ND, axis=-1)
        cos = (a_ND * b_ND).sum(-1) / np.maximum(norms_N, _EPS)
        cosine.append(float(cos.mean()))
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
