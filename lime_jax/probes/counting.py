"""Counting probe (Glasses §3.2; docs/methods.md §5): absolute error vs length and the predicted-value
histogram.

Four tasks (sum `1+...+1`, count the ones of an all-ones sequence, count the ones of a 0/1 sequence
with P(1)=0.7, count a word in a sentence); for each length of `--lengths`, `num_examples` held-out
examples are answered greedily and the median and mean absolute error |predicted - true| over the
answers that parse as a number are reported, with the parse rate (unparsed answers are left out of the
error and counted there), exact-match accuracy and the histogram of predicted values. A model with its own
subword tokenizer is asked in natural language instead (`nl_tasks.run_counting`, `prompts.py`).
"""

from __future__ import annotations

from lime_jax.data import counting as counting_data
from lime_jax.probes import common, nl_tasks, prompts
from lime_jax.probes.copying import answer_accuracy, incompatible, start_length_sweep, tokenizer_reason
from lime_jax.probes.registry import Probe, ProbeContext


def parse_count(text: str) -> int | None:
  return int(text) if text.isdigit() else None


def run(ctx: ProbeContext) -> dict:
  if nl_tasks.is_natural_language(ctx.tokenizer):
    return nl_tasks.run_counting(ctx)
  skipped = incompatible(ctx, "counting")
  if skipped:
    return skipped
  opts = ctx.options
  variants = counting_data.VARIANTS
  cfg, lengths = start_length_sweep(ctx, "counting", variants)
  task = counting_data.CountingTask(seed=int(ctx.config.seed), p_one=float(ctx.config.data.counting.p_one))
  stats: dict[str, list[dict]] = {}
  predicted: dict[str, list[list[int | None]]] = {}
  for variant in variants:
    stats[variant], predicted[variant] = [], []
    num = 1 if variant in ("sum", "ones") else opts.num_examples  # one question per length
    for n in lengths:
      ctx.progress.advance(f"{variant} n={n}")
      examples = [task.example_at("test", i, n, variant) for i in range(num)]
      _, texts = answer_accuracy(ctx, cfg, examples)
      values = [parse_count(t) for t in texts]
      stats[variant].append(prompts.parse_stats(values, [int(e.answer) for e in examples]))
      predicted[variant].append(values)
  return nl_tasks.counting_result(
    lengths,
    variants,
    stats,
    predicted,
    {"num_examples": opts.num_examples},
    "counting",
    common.train_max_length(ctx.config, "counting"),
  )


PROBE = Probe(
  "counting", run, "counting absolute error vs length and predicted-value histogram", tokenizer_reason
)
