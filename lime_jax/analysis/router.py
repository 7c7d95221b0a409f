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
Each router computes its matrices, source shares and self-retrieval (`Router.analysis`,
lime_jax/model/routers/); this module adds the rest and makes them JSON-ready.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from lime_jax.model.model_config import ModelConfig
from lime_jax.model.topologies import get_topology


def router_analysis(params: dict, cfg: ModelConfig, tokens_BT: jax.Array | None = None) -> dict:
  """Routing matrices and summaries of a LIMe model's parameters (`params` of the Transformer).

  `tokens_BT` is needed for an input-dependent router (dynamic: its weights depend on the input) and
  ignored otherwise. Returns plain Python lists (JSON-ready): `matrices` (one per layer, [R, (l+1)R] or
  [R, l+1]), `source_share` [L, L], `mean_retrieval_per_source` [L], `self_retrieval_per_head` [L, R],
  and the router's extras (top_p: `pruned_fraction` of the weights of layers >= 1, `pruned_per_layer`).
  """
  lime_router = get_topology(cfg.topology).lime_router
  if lime_router is None:
    raise ValueError(f"router analysis needs a LIMe model; config.model.topology={cfg.topology!r}.")
  router = lime_router(cfg)
  L = cfg.num_layers
  summaries = router.analysis(params, cfg, tokens_BT)
  share_LM = np.asarray(summaries.pop("source_share"), np.float64)
  matrices = summaries.pop("matrices")
  self_LR = np.asarray(summaries.pop("self_retrieval_per_head"), np.float64)
  later = [float(share_LM[m + 1 :, m].mean()) if m + 1 < L else None for m in range(L)]  # None: no later
  return {
    "router": router.name,
    "num_layers": L,
    "num_kv_heads": cfg.num_kv_heads,
    **summaries,
    "matrices": [np.asarray(m).tolist() for m in matrices],
    "source_share": share_LM.tolist(),
    "mean_retrieval_per_source": later,
    "self_retrieval_per_head": self_LR.tolist(),
  }


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

  heatmap(
    analysis["source_share"],
    f"LIMe {analysis['router']} router: share of layer l's weights",
    "source layer m",
    "layer l",
    "router_source_share.png",
  )
  heatmap(
    analysis["self_retrieval_per_head"],
    "self-retrieval weight per head",
    "kv head",
    "layer",
    "router_self_retrieval.png",
  )
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.bar(range(analysis["num_layers"]), [x or 0.0 for x in analysis["mean_retrieval_per_source"]])
  ax.set(
    title="mean retrieval weight per source layer (over later layers)",
    xlabel="source layer",
    ylabel="mean share",
  )
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "router_mean_retrieval.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths
