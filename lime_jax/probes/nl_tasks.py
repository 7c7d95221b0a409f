"""Copying and counting probes in natural language, for models with their own subword tokenizer.

`copying.run` / `counting.run` come here when the context's tokenizer is not the synthetic char / byte
tokenizer (`is_natural_language`). Prompts and parsing are `prompts.py`; answers are decoded greedily
with the KV cache (`lime_jax/model/decode.py`: prompts right-padded into one buffer per length, the cache
shared by the rows), `prompts.max_new_tokens` per style, cut at EOS or the chat template's end of turn
(`stop_ids`). A prompt carries the specials the model's tokenizer adds (`common.encode_prompt`); with
`ProbeOptions.chat_template` (`--chat_template`) each question is one user message of the tokenizer's
chat template, rendered text tokenised without added specials (`generate`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from lime_jax.data.tokenizer import ByteTokenizer, CharTokenizer
from lime_jax.model import ModelConfig, decode
from lime_jax.probes import common, prompts
from lime_jax.probes.registry import ProbeContext


def is_natural_language(tokenizer: Any) -> bool:
  """True for a tokenizer that is not one of the synthetic char / byte tokenizers."""
  return not isinstance(tokenizer, (CharTokenizer, ByteTokenizer))


def require_chat_template(tokenizer: Any) -> None:
  """Raises ValueError naming --chat_template when the tokenizer has no chat template."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(
      f"--chat_template: the tokenizer {getattr(tokenizer, 'path', type(tokenizer).__name__)!r} has no chat "
      "template (no chat_template in tokenizer_config.json, no chat_template.jinja beside it); drop the "
      "flag to ask in plain text."
    )


def chat_prompt(tokenizer: Any, text: str) -> str:
  """`text` as one user message in the tokenizer's chat template, ending with the assistant's header."""
  require_chat_template(tokenizer)
  return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def stop_ids(tokenizer: Any) -> set[int]:
  """Tokens that end an answer: EOS and the chat template's end of turn (`HFTokenizer.stop_ids`)."""
  stops = {int(i) for i in getattr(tokenizer, "stop_ids", ()) or ()}
  eos = getattr(tokenizer, "eos_id", None)
  return stops | ({int(eos)} if eos is not None else set())


class Continuation(NamedTuple):
  """A decoded answer and whether it ended at a stop token (False: cut at the token budget)."""

  text: str
  stopped: bool


def continuations(
  params: Any,
  cfg: ModelConfig,
  tokenizer: Any,
  texts: Sequence[str],
  max_new: int,
  chat_template: bool = False,
) -> list[Continuation]:
  """Greedy continuations (decoded text, cut before the first `stop_ids` token) of prompt texts, with
  the KV cache. `chat_template`: each text is asked as one user message of the tokenizer's chat template
  (`chat_prompt`), tokenised without added specials as transformers does."""
  if chat_template:
    rows = [
      common.encode_prompt(tokenizer, chat_prompt(tokenizer, t), cfg.vocab_size, specials=False)
      for t in texts
    ]
  else:
    rows = [common.encode_prompt(tokenizer, t, cfg.vocab_size) for t in texts]
  buf, lengths = common.pad_rows(rows, 0, num_rows=common.row_bucket(len(rows)))
  # One prefill of every prompt, then up to max_new steps, ending once every row has stopped
  # (docs/benchmarks.md, "Greedy decoding vs transformers").
  stops = stop_ids(tokenizer)
  new_RN = common.host(decode.greedy_continuations(cfg, params, buf, lengths, max_new, stop_ids=stops))
  out = []
  for i in range(len(rows)):
    new = [int(t) for t in new_RN[i]]
    end = next((j for j, t in enumerate(new) if t in stops), len(new))
    out.append(Continuation(tokenizer.decode(new[:end]), end < len(new)))
  return out


def generate(
  params: Any,
  cfg: ModelConfig,
  tokenizer: Any,
  texts: Sequence[str],
  max_new: int,
  chat_template: bool = False,
) -> list[str]:
  """The texts of `continuations`."""
  return [c.text for c in continuations(params, cfg, tokenizer, texts, max_new, chat_template)]


def _generate(ctx: ProbeContext, cfg: ModelConfig, texts: Sequence[str], max_new: int) -> list[Continuation]:
  """`continuations` with the probe options' prompt format."""
  return continuations(ctx.params, cfg, ctx.tokenizer, texts, max_new, ctx.options.chat_template)


def _sample(ctx: ProbeContext, n: int, text: str, output: Continuation, parsed: int | None) -> dict:
  """One (prompt, output) pair kept for reading (`stopped`: False when cut at the token budget); with
  the chat template also the rendered prompt."""
  sample = {"n": n, "prompt": text, "output": output.text, "stopped": output.stopped, "parsed": parsed}
  if ctx.options.chat_template:
    sample["rendered_prompt"] = chat_prompt(ctx.tokenizer, text)
  return sample


def prompt_format(ctx: ProbeContext) -> str:
  """How the questions were asked, for results.json and summary.md."""
  return "chat template (--chat_template)" if ctx.options.chat_template else "plain text"


def _start(ctx: ProbeContext, family: str, styles: Sequence[str]) -> tuple[ModelConfig, list[int]]:
  if ctx.options.chat_template:
    require_chat_template(ctx.tokenizer)
  lengths = sorted(int(n) for n in ctx.options.lengths)
  ctx.progress.start(family, len(styles) * len(lengths))
  return common.probe_model_cfg(ctx.model_cfg), lengths


def _copying_cell(ctx: ProbeContext, cfg: ModelConfig, style: str, s_idx: int, n: int, max_new: int) -> dict:
  """One (style, length) cell of `run_copying`: accuracy, parse rate, the paper's prompt, one sample."""
  rng = np.random.default_rng([ctx.options.seed, 1, s_idx, n])
  seqs = [prompts.copying_digits(style, n, rng) for _ in range(ctx.options.num_examples)]
  paper = [1] * (n - 1) + [0] if style != "interleaved" else None
  asked = seqs + ([paper] if paper else [])
  texts = []
  for seq in asked:
    shots = prompts.few_shot_sequences("copying", rng) if style == "few_shot" else ()
    texts.append(prompts.copying_prompt(style, seq, shots))
  outs = _generate(ctx, cfg, texts, max_new)
  preds = [prompts.parse_answer(o.text, "digit", style, seq, not o.stopped) for o, seq in zip(outs, asked)]
  stats = prompts.parse_stats(preds[: len(seqs)], [s[-1] for s in seqs])
  return {
    "accuracy": stats["accuracy"],
    "parse_rate": stats["parse_rate"],
    "paper_prompt_correct": bool(preds[-1] == 0) if paper else None,
    "sample": _sample(ctx, n, texts[0], outs[0], preds[0]),
  }


def run_copying(ctx: ProbeContext) -> dict:
  """Accuracy and parse rate of the last-digit question per style and length (prompts.COPY_STYLES)."""
  cfg, lengths = _start(ctx, "copying", prompts.COPY_STYLES)
  acc: dict[str, list[float]] = {}
  parse_rate: dict[str, list[float]] = {}
  canonical: dict[str, list[bool | None]] = {}
  samples: dict[str, list[dict]] = {}
  for s_idx, style in enumerate(prompts.COPY_STYLES):
    acc[style], parse_rate[style], canonical[style], samples[style] = [], [], [], []
    max_new = prompts.max_new_tokens(style, ctx.options.chat_template)
    for n in lengths:
      ctx.progress.advance(f"{style} n={n}")
      cell = ctx.cell(f"{style} n={n}", functools.partial(_copying_cell, ctx, cfg, style, s_idx, n, max_new))
      acc[style].append(cell["accuracy"])
      parse_rate[style].append(cell["parse_rate"])
      canonical[style].append(cell["paper_prompt_correct"])
      samples[style].append(cell["sample"])  # every length's first (prompt, output), for reading
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
  summary.append(["copying prompts", prompt_format(ctx)])
  return {
    "metrics": {
      "prompt_format": "natural_language",
      "chat_template": bool(ctx.options.chat_template),
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


def _counting_cell(
  ctx: ProbeContext, cfg: ModelConfig, style: str, s_idx: int, n: int, num: int, max_new: int
) -> dict:
  """One (style, length) cell of `run_counting`: parse statistics, the parsed counts, one sample."""
  rng = np.random.default_rng([ctx.options.seed, 2, s_idx, n])
  seqs = [prompts.counting_items(style, n, rng) for _ in range(num)]
  shots = prompts.few_shot_sequences("counting", rng) if style == "few_shot" else ()
  texts = [prompts.counting_prompt(style, seq, shots) for seq in seqs]
  outs = _generate(ctx, cfg, texts, max_new)
  preds = [
    prompts.parse_answer(o.text, "integer", style, prompts.counted_mask(style, seq), not o.stopped)
    for o, seq in zip(outs, seqs)
  ]
  return {
    "stats": prompts.parse_stats(preds, [prompts.count_answer(seq) for seq in seqs]),
    "predicted": preds,
    "sample": _sample(ctx, n, texts[0], outs[0], preds[0]),
  }


def run_counting(ctx: ProbeContext) -> dict:
  """Absolute error (median and mean) over parsed answers, parse rate, and the histogram of predicted
  counts."""
  cfg, lengths = _start(ctx, "counting", prompts.COUNT_STYLES)
  stats: dict[str, list[dict]] = {}
  predicted: dict[str, list[list[int | None]]] = {}
  samples: dict[str, list[dict]] = {}
  for s_idx, style in enumerate(prompts.COUNT_STYLES):
    stats[style], predicted[style], samples[style] = [], [], []
    max_new = prompts.max_new_tokens(style, ctx.options.chat_template)
    num = ctx.options.num_examples if style in ("bits", "word") else 1  # the all-ones questions are unique
    for n in lengths:
      ctx.progress.advance(f"{style} n={n}")
      cell = ctx.cell(
        f"{style} n={n}", functools.partial(_counting_cell, ctx, cfg, style, s_idx, n, num, max_new)
      )
      stats[style].append(cell["stats"])
      predicted[style].append(cell["predicted"])
      samples[style].append(cell["sample"])  # every length's first (prompt, output), for reading
  result = counting_result(
    lengths,
    prompts.COUNT_STYLES,
    stats,
    predicted,
    {
      "prompt_format": "natural_language",
      "chat_template": bool(ctx.options.chat_template),
      "samples": samples,
      "num_examples": ctx.options.num_examples,
    },
    "counting (natural language)",
  )
  result["summary"].append(["counting prompts", prompt_format(ctx)])
  return result


def _fmt(x: float | None) -> str:
  return "-" if x is None else f"{x:.4g}"


def counting_result(
  lengths: list[int],
  variants: Sequence[str],
  stats: dict[str, list[dict]],
  predicted: dict,
  extra: dict,
  title: str,
  train_max: int | None = None,
) -> dict:
  """The counting probe's result (both prompt formats) from the `prompts.parse_stats` of each variant and
  length: error / parse-rate plots, the histogram, and one summary row per variant and length with the
  median and mean absolute error over the parsed answers and the parse rate."""
  pick = lambda key: {v: [st[key] for st in stats[v]] for v in variants}
  abs_err, median_err, parse_rate = pick("abs_error"), pick("median_abs_error"), pick("parse_rate")
  everything = [v for variant in variants for vals in predicted[variant] for v in vals]
  total = len(everything)
  overall = sum(v is not None for v in everything) / max(total, 1)
  err_plot = {
    "name": "counting_abs_error",
    "title": f"{title}: median |predicted - true| (parsed answers)",
    "xlabel": "length n",
    "ylabel": "absolute error",
    "logx": True,
    "series": [{"label": v, "x": lengths, "y": median_err[v]} for v in variants],
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
  summary = [
    [
      f"counting {v} abs err @ n={n}",
      "unparsed"
      if st["abs_error"] is None
      else f"median {_fmt(st['median_abs_error'])} · mean {_fmt(st['abs_error'])} · "
      f"parsed {st['parsed']}/{st['total']}",
    ]
    for v in variants
    for n, st in zip(lengths, stats[v])
  ]
  summary.append(["counting parse rate (all variants)", round(overall, 4)])
  hist = prompts.histogram(everything)
  top = sorted(((c, k) for k, c in hist.items() if k != "unparsed"), reverse=True)[:3]
  summary.append(
    ["counting most predicted values (value: count)", ", ".join(f"{k}: {c}" for c, k in top) or "none"]
  )
  metrics = {
    "lengths": lengths,
    "abs_error": abs_err,
    "median_abs_error": median_err,
    "accuracy": pick("accuracy"),
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
