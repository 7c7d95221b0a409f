"""LIMe router analysis (LIMe paper Fig. 5): per-layer routing matrices and their summaries.

Conventions:
  - kv router: the matrix of layer l is W_l [R, (l+1)R] (columns: source layer m, then source head h).
    Its weights are signed and unnormalised, so summaries use normalised magnitudes: the share of
    layer l's total |W_l| on source layer m, `source_share[l, m] = sum_{r,h} |W_l[r,m,h]| / sum |W_l|`.
  - v1 routers (static / top_p / dynamic): the matrix of layer l is the softmax weights a_l [R, l+1]
    (dynamic: averaged over the tokens given); `source_share[l, m] = mean_r a_l[r, m]`.
  - Layer 0 has no router; its row is the identity (share 1 on itself).
Summaries: `mean_retrieval_per_source[m]` = mean over later layers l > m of source_share[l, m] (how
much later layers read layer m; None for the last layer); `self_retrieval_per_head[l, r]` = the share
of head r's weight on its own layer l (kv: sum_h |W_l[r,l,h]| / sum_{m,h} |W_l[r,m,h]|; v1: a_l[r, l]).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.lime import routing_weights, top_p_keep
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.transformer import Transformer


def _dynamic_weights(params: dict, cfg: ModelConfig, tokens_BT: jax.Array) -> np.ndarray:
  """Token-averaged routing weights a [L, R, L] of the dynamic router."""
  _, out = Transformer(cfg).apply({"params": params}, tokens_BT, collect=("router",))
  a_LBTRM = out.collected["router"]
  return np.asarray(jnp.mean(a_LBTRM, axis=(1, 2)))[:, :, :cfg.num_layers]


def router_analysis(params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None = None) -> dict:
  """Routing matrices and summaries of a LIMe model's parameters (`params` of the Transformer).

  `tokens_BT` is needed for the dynamic router (its weights depend on the input) and ignored otherwise.
  Returns plain Python lists (JSON-ready): `matrices` (one per layer, [R, (l+1)R] or [R, l+1]),
  `source_share` [L, L], `mean_retrieval_per_source` [L], `self_retrieval_per_head` [L, R], and for
  top_p `pruned_fraction` (of the weights of layers >= 1) and `pruned_per_layer`.
  """
  if cfg.topology not in ("lime", "lime_scan"):
    raise ValueError(f"router analysis needs a LIMe model; config.model.topology={cfg.topology!r}.")
  L, R, router = cfg.num_layers, cfg.num_kv_heads, cfg.lime.router
  result = {"router": router, "num_layers": L, "num_kv_heads": R}
  if router == "kv":
    w_LRMR = np.asarray(routing_weights(params["router"], cfg), np.float64)
    matrices = [w_LRMR[l, :, :l + 1, :].reshape(R, (l + 1) * R) for l in range(L)]
    mass_LRM = np.abs(w_LRMR).sum(axis=3)
    mass_LM = mass_LRM.sum(axis=1)
    share_LM = mass_LM / np.maximum(mass_LM.sum(axis=1, keepdims=True), 1e-30)
    self_LR = np.stack([mass_LRM[l, :, l] / np.maximum(mass_LRM[l].sum(axis=1), 1e-30) for l in range(L)])
  else:
    if router == "dynamic":
      if tokens_BT is None:
        raise ValueError("router='dynamic' depends on the input: pass tokens_BT to average it over.")
      a_LRM = _dynamic_weights(params, cfg, tokens_BT)
    else:
      a_LRM = np.asarray(routing_weights(params["router"], cfg), np.float64)
    matrices = [a_LRM[l, :, :l + 1] for l in range(L)]
    share_LM = a_LRM.mean(axis=1)
    self_LR = np.stack([a_LRM[l, :, l] for l in range(L)])
    if router == "top_p":
      pruned = _top_p_pruned(params, cfg)
      result["pruned_fraction"] = float(sum(p * (l + 1) for l, p in enumerate(pruned) if l)
                                        / sum(l + 1 for l in range(1, L)))
      result["pruned_per_layer"] = pruned
  later = [float(share_LM[m + 1:, m].mean()) if m + 1 < L else None for m in range(L)]  # None: no later
  result.update(matrices=[m.tolist() for m in matrices], source_share=share_LM.tolist(),
                mean_retrieval_per_source=later, self_retrieval_per_head=self_LR.tolist())
  return result


def _top_p_pruned(params: dict, cfg: ModelConfig) -> list[float]:
  """Fraction of each layer's router weights the top-p mask removes (0 for layer 0)."""
  L = cfg.num_layers
  w_LRM = params["router"]["w_LRM"]
  live_L1M = (jnp.arange(L)[None, :] <= jnp.arange(L)[:, None])[:, None, :]
  a_LRM = jax.nn.softmax(jnp.where(live_L1M, w_LRM, -jnp.inf), axis=-1)
  keep_LRM = np.asarray(top_p_keep(a_LRM, cfg.lime.top_p) & live_L1M)
  return [0.0] + [float(1.0 - keep_LRM[l, :, :l + 1].mean()) for l in range(1, L)]


def save_router_analysis(analysis: dict, out_dir: str) -> list[str]:
  """Writes router.json and heatmaps (source share, self-retrieval per head) to `out_dir`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, "router.json")]
  with open(paths[0], "w") as f:
    json.dump(analysis, f, indent=1)

  def heatmap(data, title, xlabel, ylabel, name):
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(np.asarray(data, np.float64), aspect="auto", origin="lower", cmap="viridis")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, name))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

  heatmap(analysis["source_share"], f"LIMe {analysis['router']} router: share of layer l's weights",
          "source layer m", "layer l", "router_source_share.png")
  heatmap(analysis["self_retrieval_per_head"], "self-retrieval weight per head", "kv head",
          "layer", "router_self_retrieval.png")
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.bar(range(analysis["num_layers"]), [x or 0.0 for x in analysis["mean_retrieval_per_source"]])
  ax.set(title="mean retrieval weight per source layer (over later layers)", xlabel="source layer",
         ylabel="mean share")
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "router_mean_retrieval.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths
