"""Copying and counting probes in natural language, for models with their own subword tokenizer.

`copying.run` / `counting.run` come here when the context's tokenizer is not the synthetic char / byte
tokenizer (`is_natural_language`). Prompts and parsing are `prompts.py`; answers are decoded greedily
with the KV cache (`lime_jax/decode.py`: prompts right-padded into one buffer per length, the cache
shared by the rows), `MAX_NEW` tokens per style, stopping at EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lime_jax import decode
from lime_jax.data.tokenizer import ByteTokenizer, CharTokenizer
from lime_jax.model import ModelConfig
from lime_jax.probes import common, prompts
from lime_jax.probes.registry import ProbeContext

_SAMPLES_PER_STYLE = 2  # (prompt, output) pairs kept per style in results.json, for reading.


def is_natural_language(tokenizer: Any) -> bool:
  """True for a tokenizer that is not one of the synthetic char / byte tokenizers."""
  return not isinstance(tokenizer, (CharTokenizer, ByteTokenizer))


def encode_prompt(tokenizer: Any, text: str, vocab_size: int) -> list[int]:
  """BOS (when the tokenizer has one) + the prompt's ids; refuses ids outside the model's vocabulary."""
  bos = getattr(tokenizer, "bos_id", None)
  ids = ([int(bos)] if bos is not None else []) + [int(i) for i in tokenizer.encode(text)]
  if max(ids) >= vocab_size:
    raise ValueError(
      f"The tokenizer gives id {max(ids)} for a probe prompt, outside the model's vocabulary "
      f"({vocab_size}); the tokenizer.json does not belong to this checkpoint."
    )
  return ids


def generate(params: Any, cfg: ModelConfig, tokenizer: Any, texts: Sequence[str], max_new: int) -> list[str]:
  """Greedy continuations (decoded text, EOS excluded) of prompt texts, with the KV cache."""
  rows = [encode_prompt(tokenizer, t, cfg.vocab_size) for t in texts]
  buf, lengths = common.pad_rows(rows, 0, num_rows=common.bucket(len(rows), minimum=8), extra=max_new)
  shortest = int(lengths.min())
  prefill = 1 << (shortest.bit_length() - 1)  # a power of two <= every prompt: few compiled shapes
  pred = np.asarray(
    decode.greedy_predictions(
      cfg, params, jnp.asarray(buf), jnp.asarray(lengths, jnp.int32), prefill_len=prefill
    )
  )
  eos = getattr(tokenizer, "eos_id", None)
  out = []
  for i in range(len(rows)):
    new = [int(t) for t in pred[i, lengths[i] - 1 : lengths[i] - 1 + max_new]]
    if eos is not None and eos in new:
      new = new[: new.index(eos)]
    out.append(tokenizer.decode(new))
  return out


def _start(ctx: ProbeContext, family: str, styles: Sequence[str]) -> tuple[ModelConfig, list[int]]:
  lengths = sorted(int(n) for n in ctx.options.lengths)
  ctx.progress.start(family, len(styles) * len(lengths))
  return common.probe_model_cfg(ctx.model_cfg), lengths


def run_copying(ctx: ProbeContext) -> dict:
  """Accuracy and parse rate of the last-digit question per style and length (prompts.COPY_STYLES)."""
  cfg, lengths = _start(ctx, "copying", prompts.COPY_STYLES)
  acc: dict[str, list[float]] = {}
  parse_rate: dict[str, list[float]] = {}
  canonical: dict[str, list[bool | None]] = {}
  samples: dict[str, list[dict]] = {}
  for s_idx, style in enumerate(prompts.COPY_STYLES):
    acc[style], parse_rate[style], canonical[style], samples[style] = [], [], [], []
    max_new = prompts.MAX_NEW.get(style, prompts.DEFAULT_MAX_NEW)
    for n in lengths:
      ctx.progress.advance(f"{style} n={n}")
      rng = np.random.default_rng([ctx.options.seed, 1, s_idx, n])
      seqs = [prompts.copying_digits(style, n, rng) for _ in range(ctx.options.num_examples)]
      paper = [1] * (n - 1) + [0] if style != "interleaved" else None
      texts = []
      for seq in seqs + ([paper] if paper else []):
        shots = prompts.few_shot_sequences("copying", rng) if style == "few_shot" else ()
        texts.append(prompts.copying_prompt(style, seq, shots))
      outs = generate(ctx.params, cfg, ctx.tokenizer, texts, max_new)
      preds = [prompts.parse_answer(o, "digit", style) for o in outs]
      stats = prompts.parse_stats(preds[: len(seqs)], [s[-1] for s in seqs])
      acc[style].append(stats["accuracy"])
      parse_rate[style].append(stats["parse_rate"])
      canonical[style].append(bool(preds[-1] == 0) if paper else None)
      if len(samples[style]) < _SAMPLES_PER_STYLE:
        samples[style].append({"n": n, "prompt": texts[0], "output": outs[0], "parsed": preds[0]})
  plot = {
    "name": "copying_accuracy",
    "title": "copying (natural language): greedy accuracy vs length",
    "xlabel": "length n",
    "ylabel": "accuracy",
    "logx": True,
    "ylim": [-0.02, 1.02],
    "series": [{"label": s, "x": lengths, "y": acc[s]} for s in prompts.COPY_STYLES],
  }
  overall = float(np.mean([r for s in prompts.COPY_STYLES for r in parse_rate[s]]))
  summary = [
    [f"copying {s} acc @ n={n}", round(a, 4)] for s in prompts.COPY_STYLES for n, a in zip(lengths, acc[s])
  ]
  summary.append(["copying parse rate (all styles)", round(overall, 4)])
  return {
    "metrics": {
      "prompt_format": "natural_language",
      "styles": list(prompts.COPY_STYLES),
      "lengths": lengths,
      "accuracy": acc,
      "parse_rate": parse_rate,
      "parse_rate_overall": overall,
      "paper_prompt_correct": canonical,
      "num_examples": ctx.options.num_examples,
      "samples": samples,
    },
    "plots": [plot],
    "summary": summary,
  }


def run_counting(ctx: ProbeContext) -> dict:
  """Absolute error over parsed answers, parse rate, and the histogram of predicted counts."""
  cfg, lengths = _start(ctx, "counting", prompts.COUNT_STYLES)
  abs_err: dict[str, list[float | None]] = {}
  acc: dict[str, list[float]] = {}
  parse_rate: dict[str, list[float]] = {}
  predicted: dict[str, list[list[int | None]]] = {}
  samples: dict[str, list[dict]] = {}
  for s_idx, style in enumerate(prompts.COUNT_STYLES):
    abs_err[style], acc[style], parse_rate[style], predicted[style], samples[style] = [], [], [], [], []
    max_new = prompts.MAX_NEW.get(style, prompts.DEFAULT_MAX_NEW)
    num = ctx.options.num_examples if style == "bits" else 1  # the all-ones questions are unique
    for n in lengths:
      ctx.progress.advance(f"{style} n={n}")
      rng = np.random.default_rng([ctx.options.seed, 2, s_idx, n])
      seqs = [prompts.counting_items(style, n, rng) for _ in range(num)]
      shots = prompts.few_shot_sequences("counting", rng) if style == "few_shot" else ()
      texts = [prompts.counting_prompt(style, seq, shots) for seq in seqs]
      outs = generate(ctx.params, cfg, ctx.tokenizer, texts, max_new)
      preds = [prompts.parse_answer(o, "integer", style) for o in outs]
      stats = prompts.parse_stats(preds, [sum(seq) for seq in seqs])
      abs_err[style].append(stats["abs_error"])
      acc[style].append(stats["accuracy"])
      parse_rate[style].append(stats["parse_rate"])
      predicted[style].append(preds)
      if len(samples[style]) < _SAMPLES_PER_STYLE:
        samples[style].append({"n": n, "prompt": texts[0], "output": outs[0], "parsed": preds[0]})
  return counting_result(
    lengths,
    prompts.COUNT_STYLES,
    abs_err,
    acc,
    parse_rate,
    predicted,
    {"prompt_format": "natural_language", "samples": samples, "num_examples": ctx.options.num_examples},
    "counting (natural language)",
  )


def counting_result(
  lengths: list[int],
  variants: Sequence[str],
  abs_err: dict,
  acc: dict,
  parse_rate: dict,
  predicted: dict,
  extra: dict,
  title: str,
  train_max: int | None = None,
) -> dict:
  """The counting probe's result (both prompt formats): error / parse-rate plots, the histogram."""
  everything = [v for variant in variants for vals in predicted[variant] for v in vals]
  total = len(everything)
  overall = sum(v is not None for v in everything) / max(total, 1)
  err_plot = {
    "name": "counting_abs_error",
    "title": f"{title}: mean |predicted - true| (parsed answers)",
    "xlabel": "length n",
    "ylabel": "absolute error",
    "logx": True,
    "series": [{"label": v, "x": lengths, "y": abs_err[v]} for v in variants],
  }
  rate_plot = {
    "name": "counting_parse_rate",
    "title": f"{title}: share of answers with a number",
    "xlabel": "length n",
    "ylabel": "parse rate",
    "logx": True,
    "ylim": [-0.02, 1.02],
    "series": [{"label": v, "x": lengths, "y": parse_rate[v]} for v in variants],
  }
  hist_plot = {
    "name": "counting_predictions",
    "kind": "hist",
    "title": f"{title}: predicted values",
    "xlabel": "predicted count",
    "ylabel": "frequency",
    "values": [v for v in everything if v is not None],
    "vlines": [{"x": n, "label": ""} for n in lengths],
  }
  if train_max:
    err_plot["vlines"] = [{"x": train_max, "label": f"train max length {train_max}"}]
  fmt = lambda e: "unparsed" if e is None else round(e, 3)
  summary = [[f"counting {v} abs err @ n={n}", fmt(e)] for v in variants for n, e in zip(lengths, abs_err[v])]
  summary.append(["counting parse rate (all variants)", round(overall, 4)])
  hist = prompts.histogram(everything)
  top = sorted(((c, k) for k, c in hist.items() if k != "unparsed"), reverse=True)[:3]
  summary.append(
    ["counting most predicted values (value: count)", ", ".join(f"{k}: {c}" for c, k in top) or "none"]
  )
  metrics = {
    "lengths": lengths,
    "abs_error": abs_err,
    "accuracy": acc,
    "parse_rate": parse_rate,
    "parse_rate_overall": overall,
    "predicted": predicted,
    "histogram": hist,
    "histogram_by_variant": {
      v: prompts.histogram(x for vals in predicted[v] for x in vals) for v in variants
    },
    "train_max_length": train_max,
    **extra,
  }
  return {"metrics": metrics, "plots": [err_plot, rate_plot, hist_plot], "summary": summary}
