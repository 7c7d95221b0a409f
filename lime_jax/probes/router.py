"""LIMe router probe (LIMe Fig. 5): routing heatmaps and summaries, from `lime_jax.analysis.router`."""

from __future__ import annotations

from lime_jax.analysis.router import router_analysis
from lime_jax.data import pipeline
from lime_jax.model.topologies import get_topology
from lime_jax.probes.registry import Probe, ProbeContext


def compatible(ctx: ProbeContext) -> str | None:
  topology = ctx.model_cfg.topology
  has_router = get_topology(topology).lime_router is not None
  return None if has_router else f"not a LIMe checkpoint (topology {topology!r})"


def run(ctx: ProbeContext) -> dict:
  cfg = ctx.model_cfg
  if compatible(ctx):
    reason = f"router probe skipped: {compatible(ctx)}."
    return {"metrics": {"skipped": reason}, "notes": [reason]}
  ctx.progress.start("router", 1)
  ctx.progress.advance(cfg.lime.router)
  tokens = None
  if get_topology(cfg.topology).lime_router(cfg).input_dependent:  # its weights depend on the tokens
    tokens = pipeline.make_eval_batches(
      ctx.config, "test", num_examples=ctx.options.num_examples, batch_size=ctx.options.num_examples
    )[0]["inputs"]
  analysis = router_analysis(ctx.params, cfg, tokens)
  L = analysis["num_layers"]
  plots = [
    {
      "name": "router_source_share",
      "kind": "heatmap",
      "data": analysis["source_share"],
      "title": f"LIMe {analysis['router']} router: share of layer l's weights",
      "xlabel": "source layer m",
      "ylabel": "layer l",
    },
    {
      "name": "router_self_retrieval",
      "kind": "heatmap",
      "data": analysis["self_retrieval_per_head"],
      "title": "self-retrieval weight per head",
      "xlabel": "kv head",
      "ylabel": "layer",
    },
    {
      "name": "router_mean_retrieval",
      "title": "mean retrieval weight per source layer (later layers)",
      "xlabel": "source layer",
      "ylabel": "mean share",
      "series": [
        {"label": "mean share", "x": list(range(L - 1)), "y": analysis["mean_retrieval_per_source"][:-1]}
      ],
    },
  ]
  share = analysis["mean_retrieval_per_source"][:-1]
  summary = (
    [
      [
        "router: mean retrieval of layer 0 / of the best source",
        f"{share[0]:.3f} / {max(share):.3f} (layer {share.index(max(share))})",
      ]
    ]
    if share
    else []
  )
  return {"metrics": analysis, "plots": plots, "summary": summary}


PROBE = Probe("router", run, "LIMe routing heatmaps and summaries", compatible)
