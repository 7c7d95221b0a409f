"""Probe `lm`: held-out loss, perplexity and bits per byte of a text run (task 'text').

The figures use the run's eval split (`data.text.eval_split` / `eval_files`, `--num_examples` windows).
Benchmarks (multiple choice, generation, perplexity of other corpora) run on lm-evaluation-harness:
`python -m lime_jax.harness --model=RUN --tasks=...` (lime_jax/evals/lm_harness.py).
"""

from __future__ import annotations

import jax
import numpy as np

from lime_jax.data import tasks
from lime_jax.losses import token_metrics
from lime_jax.probes import common
from lime_jax.probes.registry import Probe, ProbeContext


def _log_probs_fn(ctx: ProbeContext):
  cfg = common.probe_model_cfg(ctx.model_cfg)

  def fn(tokens_BT: np.ndarray, positions_BT: np.ndarray | None = None) -> np.ndarray:
    logits_BTV, _ = common.forward(ctx.params, cfg, tokens_BT, (), ctx.batch_sharding, positions_BT)
    return common.host(jax.nn.log_softmax(logits_BTV.astype(np.float32), axis=-1))

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


HARNESS_HINT = "benchmarks run on lm-evaluation-harness: python -m lime_jax.harness --model=RUN --tasks=..."


def run(ctx: ProbeContext) -> dict:
  if ctx.pretrained or ctx.config.data.task != tasks.TEXT_TASK:
    reason = f"lm: held-out loss needs a text run (task 'text'); {HARNESS_HINT}."
    return {"metrics": {"skipped": reason}, "notes": [reason]}
  ctx.progress.start("lm", 1)
  h = heldout(ctx, _log_probs_fn(ctx))
  ctx.progress.advance("heldout")
  summary = [
    ["held-out CE (nats/token)", f"{h['ce']:.4f}"],
    ["perplexity", f"{h['perplexity']:.2f}"],
    ["bits per byte", f"{h['bits_per_byte']:.4f}"],
  ]
  return {"metrics": {"heldout": h}, "summary": summary}


PROBE = Probe("lm", run, "held-out loss / perplexity / bits per byte of a text run")
