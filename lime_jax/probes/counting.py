"""Counting probe (Glasses §3.2; SPEC §5): absolute error vs length and the predicted-value histogram.

Four tasks (sum `1+...+1`, count the ones of an all-ones sequence, count the ones of a 0/1 sequence
with P(1)=0.7, count a word in a sentence); for each length of `--lengths`, `num_examples` held-out
examples are answered greedily and the mean absolute error |predicted - true| is reported (an answer
that is not a number counts as error |true|, i.e. predicted 0), with exact-match accuracy.
"""

from __future__ import annotations

import numpy as np

from lime_jax.data import counting as counting_data
from lime_jax.probes import common
from lime_jax.probes.copying import answer_accuracy, incompatible, start_length_sweep
from lime_jax.probes.registry import Probe, ProbeContext, register


def parse_count(text: str) -> int | None:
  return int(text) if text.isdigit() else None


def run(ctx: ProbeContext) -> dict:
  skipped = incompatible(ctx, "counting")
  if skipped:
    return skipped
  opts = ctx.options
  variants = counting_data.VARIANTS
  cfg, lengths = start_length_sweep(ctx, "counting", variants)
  task = counting_data.CountingTask(seed=int(ctx.config.seed), p_one=float(ctx.config.data.counting.p_one))
  abs_err: dict[str, list[float]] = {}
  acc: dict[str, list[float]] = {}
  predicted: dict[str, list[list[int | None]]] = {}
  for variant in variants:
    abs_err[variant], acc[variant], predicted[variant] = [], [], []
    num = 1 if variant in ("sum", "ones") else opts.num_examples  # one question per length
    for n in lengths:
      ctx.progress.advance(f"{variant} n={n}")
      examples = [task.example_at("test", i, n, variant) for i in range(num)]
      a, texts = answer_accuracy(ctx, cfg, examples)
      values = [parse_count(t) for t in texts]
      errors = [abs((v if v is not None else 0) - int(e.answer)) for v, e in zip(values, examples)]
      abs_err[variant].append(float(np.mean(errors)))
      acc[variant].append(a)
      predicted[variant].append(values)
  train_max = common.train_max_length(ctx.config, "counting")
  err_plot = {"name": "counting_abs_error", "title": "counting: mean |predicted - true| vs length",
              "xlabel": "length n", "ylabel": "absolute error", "logx": True,
              "series": [{"label": v, "x": lengths, "y": abs_err[v]} for v in variants]}
  all_values = [v for variant in variants for vals in predicted[variant] for v in vals if v is not None]
  hist_plot = {"name": "counting_predictions", "kind": "hist", "title": "counting: predicted values",
               "xlabel": "predicted count", "ylabel": "frequency", "values": all_values,
               "vlines": [{"x": n, "label": ""} for n in lengths]}
  if train_max:
    err_plot["vlines"] = [{"x": train_max, "label": f"train max length {train_max}"}]
  summary = [[f"counting {v} abs err @ n={n}", round(e, 3)] for v in variants
             for n, e in zip(lengths, abs_err[v])]
  return {"metrics": {"lengths": lengths, "abs_error": abs_err, "accuracy": acc, "predicted": predicted,
                      "num_examples": opts.num_examples, "train_max_length": train_max},
          "plots": [err_plot, hist_plot], "summary": summary}


register(Probe("counting", run, "counting absolute error vs length and predicted-value histogram"))
