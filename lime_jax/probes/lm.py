"""Probe `lm`: held-out loss, perplexity and bits per byte (task 'text') and multiple-choice accuracy.

Held-out figures use the run's eval split (`data.text.eval_split` / `eval_files`, `--num_examples`
windows). Multiple choice reads `--mc_tasks` (jsonl files of HellaSwag / ARC / PIQA / WinoGrande /
generic records, `TASK=PATH` or a path whose name says the task; see evals/multiple_choice.py) with
`--mc_shots` examples in front of each question and at most `--mc_limit` questions per file (0: all).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lime_jax.data import tasks
from lime_jax.evals import multiple_choice
from lime_jax.losses import token_metrics
from lime_jax.probes import common
from lime_jax.probes.registry import Probe, ProbeContext


def _log_probs_fn(ctx: ProbeContext):
  cfg = common.probe_model_cfg(ctx.model_cfg)

  def fn(tokens_BT: np.ndarray, positions_BT: np.ndarray | None = None) -> np.ndarray:
    logits_BTV, _ = common.forward(ctx.params, cfg, tokens_BT, (), ctx.batch_sharding, positions_BT)
    return np.asarray(jax.nn.log_softmax(logits_BTV.astype(np.float32), axis=-1))

  return fn


def heldout(ctx: ProbeContext, log_probs_fn) -> dict[str, float]:
  """CE, perplexity, bits per byte of the first `--num_examples` eval windows of a text run."""
  from lime_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  batches = pipeline.make_eval_batches(
    ctx.config, "test", num_examples=ctx.options.num_examples, batch_size=min(16, ctx.options.num_examples)
  )
  ce_sum = ce_tokens = num_bytes = 0.0
  for b in batches:
    logp = log_probs_fn(b["inputs"], b.get("positions"))  # per-document with model.document_mask
    nll_BT = -np.take_along_axis(logp, b["targets"][..., None], axis=-1)[..., 0]
    mask_BT = b["loss_mask"] * b["example_mask"][:, None]
    ce_sum += float((nll_BT * mask_BT).sum())
    ce_tokens += float(mask_BT.sum())
    num_bytes += float(b["num_bytes"].sum())
  return {
    "ce": ce_sum / max(ce_tokens, 1.0),
    "tokens": ce_tokens,
    "bytes": num_bytes,
    **token_metrics.lm_metrics(ce_sum, ce_tokens, num_bytes),
  }


def run(ctx: ProbeContext) -> dict:
  fn = _log_probs_fn(ctx)
  metrics: dict[str, Any] = {}
  summary = []
  if not ctx.pretrained and ctx.config.data.task == tasks.TEXT_TASK:
    metrics["heldout"] = heldout(ctx, fn)
    h = metrics["heldout"]
    summary += [
      ["held-out CE (nats/token)", f"{h['ce']:.4f}"],
      ["perplexity", f"{h['perplexity']:.2f}"],
      ["bits per byte", f"{h['bits_per_byte']:.4f}"],
    ]
  max_len = 2048 if ctx.pretrained else int(ctx.config.data.seq_len)  # RoPE: no fixed limit when pretrained.
  files = multiple_choice.parse_task_files(ctx.options.mc_tasks)
  ctx.progress.start("lm", max(1, len(files)))
  for task, path in files:
    docs = multiple_choice.read_docs(task, path, ctx.options.mc_limit)
    res = multiple_choice.score_mc(fn, ctx.tokenizer, docs, ctx.options.mc_shots, ctx.options.seed, max_len)
    metrics[task] = {k: v for k, v in res.items() if k != "loglikelihoods"}
    summary.append(
      [
        f"{task} ({res['num_docs']} docs, {res['num_shots']}-shot) acc / acc_norm",
        f"{res['acc']:.4f} / {res['acc_norm']:.4f}",
      ]
    )
    ctx.progress.advance(task)
  if not metrics:
    reason = "lm: nothing to score: not a text run and no --mc_tasks given."
    return {"metrics": {"skipped": reason}, "notes": [reason]}
  return {"metrics": metrics, "summary": summary}


PROBE = Probe("lm", run, "held-out loss / perplexity / bits per byte; multiple-choice acc (--mc_tasks)")
