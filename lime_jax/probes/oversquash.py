"""Over-squashing (Glasses §5, Thm 5.1; docs/methods.md §6): sensitivity of the last token's final
representation
to each input embedding, ||d y_n / d e_i||_F, against the distance n - i.

Targets y_n: `hidden` = the last layer's output at the last position (before the final norm), and
`value` = the last layer's value vector there (for LIMe: the mixed value attention used). The input is
the embedding sequence e (the model's embedding lookup, differentiated through `embeddings_BTD`).
Exact: the full Jacobian (jax.jacrev). Hutchinson: with Rademacher u, E||u^T J_i||^2 = ||J_i||_F^2, so
K vector-Jacobian products estimate every position's squared norm at once, with standard error
std/sqrt(K). Prompts: BOS (where the tokenizer puts one, `common.start_ids`) then uniform regular tokens
of the run's vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import ModelConfig, Transformer
from lime_jax.probes import common
from lime_jax.probes.registry import Probe, ProbeContext

TARGETS = ("hidden", "value")
_EXACT_MAX_OUTPUT = 512  # 'auto' uses the exact Jacobian up to this many output features.


def _target_fn(cfg: ModelConfig, target: str, position: int):
  model = Transformer(cfg)

  def y(params, tokens_1T, emb_TD):
    _, out = model.apply({"params": params}, tokens_1T, collect=(target,), embeddings_BTD=emb_TD[None])
    return out.collected[target][-1][0, position].reshape(-1).astype(jnp.float32)

  return y


@functools.lru_cache(maxsize=32)
def _exact(cfg: ModelConfig, target: str, position: int):
  y = _target_fn(cfg, target, position)

  def sq_norms(params, tokens_1T):
    emb_TD = params["embed"][tokens_1T[0]].astype(jnp.float32)
    jac_OTD = jax.jacrev(lambda e: y(params, tokens_1T, e))(emb_TD)
    return jnp.sum(jnp.square(jac_OTD), axis=(0, 2))

  return jax.jit(sq_norms)


@functools.lru_cache(maxsize=32)
def _hutchinson(cfg: ModelConfig, target: str, position: int, num_samples: int):
  y = _target_fn(cfg, target, position)

  def sq_norms(params, tokens_1T, seed):
    key = jax.random.key(seed)
    emb_TD = params["embed"][tokens_1T[0]].astype(jnp.float32)
    out, vjp = jax.vjp(lambda e: y(params, tokens_1T, e), emb_TD)
    u_KO = jax.random.rademacher(key, (num_samples, out.shape[0]), jnp.float32)
    # lax.map in chunks of 64, not one vmap: on CPU (jax 0.10.2) a vmap of this vjp over 512 cotangents
    # returned wrong rows from 128 on (tests/integration/test_probes_forward.py pins the estimate to the
    # exact one).
    g_KTD = jax.lax.map(lambda u: vjp(u)[0], u_KO, batch_size=min(num_samples, 64))
    per_sample_KT = jnp.sum(jnp.square(g_KTD), axis=-1)
    return per_sample_KT.mean(axis=0), per_sample_KT.std(axis=0, ddof=1) / jnp.sqrt(num_samples)

  return jax.jit(sq_norms)


def sensitivity(
  params: Any,
  cfg: ModelConfig,
  tokens_T: np.ndarray,
  target: str = "hidden",
  position: int = -1,
  method: str = "exact",
  num_samples: int = 64,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Squared Frobenius norms ||d y_position / d e_i||^2 for every input position i [T], and (Hutchinson)
  their standard errors [T] (None for the exact method)."""
  if target not in TARGETS:
    raise ValueError(f"oversquash target {target!r} is unknown; use one of {TARGETS}.")
  pcfg = common.probe_model_cfg(cfg)
  tokens_1T = np.asarray(tokens_T, np.int32)[None]
  if method == "exact":
    return common.host(_exact(pcfg, target, position)(params, tokens_1T), np.float64), None
  if method == "hutchinson":
    est, err = _hutchinson(pcfg, target, position, num_samples)(params, tokens_1T, np.int32(seed))
    return common.host(est, np.float64), common.host(err, np.float64)
  raise ValueError(f"--oversquash_method={method!r} is unknown; use 'auto', 'exact' or 'hutchinson'.")


def run(ctx: ProbeContext) -> dict:
  opts, cfg, tok = ctx.options, ctx.model_cfg, ctx.tokenizer
  T = int(opts.oversquash_length)
  method = opts.oversquash_method
  rng = np.random.default_rng(opts.seed)
  num_special = int(getattr(tok, "num_special", 16))
  start = common.start_ids(tok)  # BOS where the tokenizer puts one
  prompts = [
    np.concatenate([start, rng.integers(num_special, cfg.vocab_size, size=T - len(start))]).astype(np.int64)
    for _ in range(opts.oversquash_prompts)
  ]
  ctx.progress.start("oversquash", len(TARGETS) * len(prompts))
  metrics: dict[str, Any] = {"length": T, "distance": list(range(T)), "prompts": len(prompts)}
  series = []
  for target in TARGETS:
    out_dim = cfg.d_model if target == "hidden" else cfg.num_kv_heads * cfg.head_dim
    m = method if method != "auto" else ("exact" if out_dim <= _EXACT_MAX_OUTPUT else "hutchinson")
    norms = []
    for i, tokens in enumerate(prompts):
      ctx.progress.advance(f"{target} prompt {i + 1}")
      sq, _ = sensitivity(ctx.params, cfg, tokens, target, -1, m, opts.hutchinson_samples, opts.seed + i)
      norms.append(np.sqrt(np.maximum(sq, 0.0))[::-1])  # index = distance n - i
    mean = np.mean(norms, axis=0)
    metrics[target] = {
      "method": m,
      "mean_by_distance": mean.tolist(),
      "share_last_quarter": float(mean[: max(1, T // 4)].sum() / max(mean.sum(), 1e-30)),
    }
    series.append({"label": f"{target} ({m})", "x": list(range(T)), "y": mean.tolist()})
  plot = {
    "name": "oversquash_sensitivity",
    "title": "sensitivity of the last token's final representation",
    "xlabel": "distance n - i",
    "ylabel": "||d y_n / d e_i||_F (mean over prompts)",
    "logy": True,
    "series": series,
  }
  summary = [
    [
      f"oversquash {t}: ||J|| at distance 0 / {T - 1}",
      f"{metrics[t]['mean_by_distance'][0]:.3g} / {metrics[t]['mean_by_distance'][-1]:.3g}",
    ]
    for t in TARGETS
  ]
  return {"metrics": metrics, "plots": [plot], "summary": summary}


PROBE = Probe("oversquash", run, "sensitivity ||d y_n / d e_i|| vs distance (hidden, values)")
