"""Copying probe (Glasses §3.1; docs/methods.md §5): greedy accuracy vs sequence length for the four variants.

For each variant and each length of `--lengths`: accuracy of the greedy answer on `num_examples`
held-out examples (`CopyingTask.example_at('test', i, n, variant)`), and whether the paper's own prompt
(`canonical_example`: 1...10, 01...1, the hint, 1010...0) is answered correctly. Needs a model with the
copying/counting tokenizer (a run of task 'copying' or 'counting', or `--random_init` with one). A model
with its own subword tokenizer is asked in natural language instead (`nl_tasks.run_copying`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lime_jax.data import copying as copying_data
from lime_jax.model import ModelConfig
from lime_jax.probes import common, nl_tasks
from lime_jax.probes.registry import Probe, ProbeContext


def tokenizer_reason(ctx: ProbeContext) -> str | None:
  """Why the copying/counting prompts cannot run on ctx's checkpoint (its tokenizer cannot encode them),
  or None (`Probe.compatible` of both probes). A subword tokenizer gets the natural-language prompts."""
  if nl_tasks.is_natural_language(ctx.tokenizer) or common.encodable(
    ctx.tokenizer, copying_data.HINT + "count cat:=+"
  ):
    return None
  return (
    f"the run's tokenizer (task {ctx.config.data.task!r}) cannot encode its prompts; train with "
    "--config.data.task=copying or counting"
  )


def incompatible(ctx: ProbeContext, family: str) -> dict | None:
  """A 'skipped' result when the run's tokenizer cannot encode the copying/counting prompts."""
  reason = tokenizer_reason(ctx)
  if reason is None:
    return None
  reason = f"{family} probe skipped: {reason}."
  return {"metrics": {"skipped": reason}, "notes": [reason]}


def answer_accuracy(ctx: ProbeContext, cfg, examples) -> tuple[float, list[str]]:
  """Exact-match accuracy of greedy answers, and the decoded answers."""
  tok = ctx.tokenizer
  prompts = [common.prompt_ids(tok, e.question, int(ctx.config.data.num_pause)) for e in examples]
  max_new = max(len(tok.encode(e.answer)) for e in examples) + 1
  outs = common.greedy_decode(ctx.params, cfg, prompts, max_new, tok.eos_id, tok.pad_id, ctx.batch_sharding)
  texts = [tok.decode(o) for o in outs]
  return float(np.mean([t == e.answer for t, e in zip(texts, examples)])), texts


def start_length_sweep(
  ctx: ProbeContext, family: str, variants: Sequence[str]
) -> tuple[ModelConfig, list[int]]:
  """The probe model config and the sorted `--lengths`; starts progress over variants x lengths."""
  lengths = sorted(ctx.options.lengths)
  ctx.progress.start(family, len(variants) * len(lengths))
  return common.probe_model_cfg(ctx.model_cfg), lengths


def run(ctx: ProbeContext) -> dict:
  if nl_tasks.is_natural_language(ctx.tokenizer):
    return nl_tasks.run_copying(ctx)
  skipped = incompatible(ctx, "copying")
  if skipped:
    return skipped
  opts = ctx.options
  cfg, lengths = start_length_sweep(ctx, "copying", copying_data.VARIANTS)
  task = copying_data.CopyingTask(seed=int(ctx.config.seed))
  acc: dict[str, list[float]] = {}
  canonical: dict[str, list[bool]] = {}
  for variant in copying_data.VARIANTS:
    acc[variant], canonical[variant] = [], []
    for n in lengths:
      ctx.progress.advance(f"{variant} n={n}")
      examples = [task.example_at("test", i, n, variant) for i in range(opts.num_examples)]
      paper = copying_data.canonical_example(variant, n)
      _, texts = answer_accuracy(ctx, cfg, examples + [paper])  # one batch: one compiled shape
      acc[variant].append(float(np.mean([t == e.answer for t, e in zip(texts, examples)])))
      canonical[variant].append(bool(texts[-1] == paper.answer))
  train_max = common.train_max_length(ctx.config, "copying")
  plot = {
    "name": "copying_accuracy",
    "title": "copying: greedy accuracy vs length",
    "xlabel": "length n",
    "ylabel": "accuracy",
    "logx": True,
    "ylim": [-0.02, 1.02],
    "series": [{"label": v, "x": lengths, "y": acc[v]} for v in copying_data.VARIANTS],
  }
  if train_max:
    plot["vlines"] = [{"x": train_max, "label": f"train max length {train_max}"}]
  summary = [
    [f"copying {v} acc @ n={n}", round(a, 4)] for v in copying_data.VARIANTS for n, a in zip(lengths, acc[v])
  ]
  return {
    "metrics": {
      "lengths": lengths,
      "accuracy": acc,
      "paper_prompt_correct": canonical,
      "num_examples": opts.num_examples,
      "train_max_length": train_max,
    },
    "plots": [plot],
    "summary": summary,
  }


PROBE = Probe(
  "copying", run, "copying accuracy vs length (last / first / hint / interleaved)", tokenizer_reason
)
