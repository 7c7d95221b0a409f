"""Representational collapse (Glasses §4, Thm 4.2; docs/methods.md §6) and the paper's toy checks.

For a prompt P_n and P*_n = P_n with its last token repeated, the distance between the last-token,
last-layer representations is measured as n grows, for three prompt families:
  repeated_ones   P_n = 1^n;
  uniform_digits  P_n = n-1 uniform digits then 1 (so P*_n ends in 11); `collapse_samples` prompts;
  ones_commas     n ones with a comma after every third one (111,111,1...); P*_n adds one more 1.
(A tokenizer without ',' gets the first of `+ - = space` it has, recorded as `separator`.)
Every prompt starts with BOS where the tokenizer puts one (as in training; a pretrained model's own
rule, `common.start_ids`: none for SmolLM2). Readings of "per head", both reported:
  heads   the final layer's attention-head outputs at the last token (probabilities x values of each
          head, before the output projection), L-inf per head;
  chunks  the final residual stream (last layer output, before the final norm) cut into num_heads
          equal chunks, L-inf per chunk;
with mean / min / max over heads, and the L1 distance of the whole final residual vector. Per layer:
  layers  every layer's residual stream output at the last token, L-inf distance, absolute and relative
          to the L-inf norm of P_n's representation at that layer (the relative spacing of bf16
          numbers is 2^-8 .. 2^-7, so a relative distance below 2^-8 cannot survive a bf16 rounding).
Everything is run with activations in float32 and in bfloat16 (parameters fp32), against the bf16
resolution 2^-7.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model import ModelConfig, Transformer, init_cache
from lime_jax.probes import collapse_toys, common
from lime_jax.probes.registry import Probe, ProbeContext

FAMILIES = ("repeated_ones", "uniform_digits", "ones_commas")
BF16_RESOLUTION = 2.0**-7
BF16_UNIT_ROUNDOFF = 2.0**-8  # the largest relative error of rounding a number to bf16
_SEPARATORS = (",", "+", "-", "=", " ")
_PROBS_BUDGET_BYTES = 1 << 29  # one layer's attention + KV cache per forward (the batch is split).


def family_texts(family: str, n: int, rng: np.random.Generator, separator: str = ",") -> tuple[str, str]:
  """(P_n, P*_n) of a family as text."""
  if family == "repeated_ones":
    return "1" * n, "1" * (n + 1)
  if family == "uniform_digits":
    p = "".join(str(d) for d in rng.integers(0, 10, size=n - 1)) + "1"
    return p, p + "1"
  if family == "ones_commas":

    def text(k):
      return separator.join("1" * min(3, k - i) for i in range(0, k, 3))

    return text(n), text(n) + "1"
  raise ValueError(f"unknown prompt family {family!r}; use one of {FAMILIES}.")


@functools.lru_cache(maxsize=32)
def last_token_fn(cfg: ModelConfig):
  """jit of (params, ids [B, T], last [B, K]) -> (hidden [B, K, D], heads [B, K, N, H], layers [B, K, L, D])
  at the positions last[b, k] of each row.

  The padded prompts are prefilled into a KV cache of T slots with nothing collected (the forward of the
  full-sequence probe, same shapes, so the same numbers); `hidden` is its final residual stream at each
  `last`. Then, for each k, one decoding step feeds row b's token at last[b, k] again at its own position,
  with one more (empty) cache slot for the step's own key / value, and collects the last layer's values
  and attention row and every layer's residual output (`layers`, to float rounding the full forward's).
  Slot s holds position s, so the step's causal mask shows it slots 0..last, the prefilled copy of its
  own key / value included: its query row is the one the full forward computes at `last`, and only that
  row of probabilities is formed, [L, B, N, 1, T + 1], instead of every layer's [B, N, T, T]. K > 1 reads
  several prefixes of one prompt from one prefill (P_n and P*_n = P_n + one token: `pair_representations`).
  """
  model = Transformer(cfg)

  def fn(params, ids_BT, last_BK):
    B, T = ids_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    _, out = model.apply({"params": params}, ids_BT, positions_BT, cache=init_cache(cfg, B, T, cfg.dtype))
    hidden_BKD = jnp.take_along_axis(out.h_BTD, last_BK[:, :, None], axis=1)
    slot = ((0, 0), (0, 0), (0, 1), (0, 0), (0, 0))  # [L, B, S, R, H]: one more slot, S = T + 1
    cache = {**out.cache, "k": jnp.pad(out.cache["k"], slot), "v": jnp.pad(out.cache["v"], slot)}
    heads, layers = [], []
    for k in range(last_BK.shape[1]):  # static: one step per read position, each on the prefilled cache
      last_B1 = last_BK[:, k : k + 1]
      token_B1 = jnp.take_along_axis(ids_BT, last_B1, axis=1)
      _, step = model.apply(
        {"params": params}, token_B1, last_B1, cache=cache, collect=("value", "attn_probs", "hidden")
      )
      layers.append(jnp.swapaxes(step.collected["hidden"][:, :, 0], 0, 1))
      v_BSRH = step.collected["value"][-1]
      probs_BNS = step.collected["attn_probs"][-1][:, :, 0, :]
      R, G = v_BSRH.shape[2], cfg.num_heads // v_BSRH.shape[2]
      probs_BRGS = probs_BNS.reshape(B, R, G, -1).astype(v_BSRH.dtype)
      heads.append(jnp.einsum("brgs,bsrh->brgh", probs_BRGS, v_BSRH).reshape(B, cfg.num_heads, -1))
    return hidden_BKD, jnp.stack(heads, axis=1), jnp.stack(layers, axis=1)

  return jax.jit(fn)


def _readings(
  params: Any,
  cfg: ModelConfig,
  rows: list[list[int]],
  back: tuple[int, ...],
  sharding: Any = None,
  num_rows: int | None = None,
) -> list[dict[str, np.ndarray]]:
  """For each k of `back`, the representations at position len(row) - 1 - k of every row (`last_token_fn`;
  each row prefilled once), as fp32 numpy dicts like `last_token_representations`'."""
  ids_BT, lengths_B = common.pad_rows(rows, 0, num_rows)
  B, T = ids_BT.shape
  per_row = (
    cfg.num_heads * T * (T + 1) * 4 + 2 * cfg.num_layers * (T + 1) * cfg.num_kv_heads * cfg.head_dim * 4
  )
  step = max(1, min(B, _PROBS_BUDGET_BYTES // max(per_row, 1)))
  fn = last_token_fn(cfg)
  last_BK = (lengths_B[:, None] - 1 - np.asarray(back)[None]).astype(np.int32)
  if last_BK.min() < 0:
    raise ValueError(f"Every prompt needs more than {max(back)} tokens to be read {max(back)} from its end.")
  parts: dict[str, list[np.ndarray]] = {"hidden": [], "heads": [], "layers": []}
  for start in range(0, B, step):
    ids = common.place_batch(np.asarray(ids_BT[start : start + step], np.int32), sharding)
    last = common.place_batch(last_BK[start : start + step], sharding)
    for name, x in zip(("hidden", "heads", "layers"), fn(params, ids, last)):
      parts[name].append(common.host(x, np.float32))
  full = {name: np.concatenate(x)[: len(rows)] for name, x in parts.items()}
  return [{name: x[:, k] for name, x in full.items()} for k in range(len(back))]


def last_token_representations(
  params: Any, cfg: ModelConfig, rows: list[list[int]], sharding: Any = None, num_rows: int | None = None
) -> dict[str, np.ndarray]:
  """Last-token, last-layer representations of prompts (token ids), as fp32 numpy.

  Prompts are right-padded to a power-of-two length (the model is causal, so each prompt's last
  position is unaffected) and to `num_rows` rows, which keeps the number of compiled shapes small.
  `cfg` must use explicit attention. Returns `hidden` [B, D] (last layer output), `heads` [B, N, H]
  (each head's attention output at the last token, in the compute dtype, as the model forms it) and
  `layers` [B, L, D] (every layer's output at the last token, from the one-token step). Only
  the last token's attention row is formed (`last_token_fn`): memory per prompt is one layer's explicit
  attention and the KV cache, not every layer's T x T probabilities.
  """
  return _readings(params, cfg, rows, (0,), sharding, num_rows)[0]


def pair_representations(
  params: Any,
  cfg: ModelConfig,
  longer_rows: list[list[int]],
  sharding: Any = None,
  num_rows: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(readings of P_n, readings of P*_n) for prompts P*_n = P_n + one token, given as `longer_rows`
  (P*_n; P_n is each row without its last token): one prefill of P*_n serves both, read at its last two
  positions. The same numbers as `last_token_representations` of [P_n, P*_n] (a causal prefill: the
  extra token never reaches position len(P_n) - 1) at half the prefill work."""
  a, b = _readings(params, cfg, longer_rows, (1, 0), sharding, num_rows)
  return a, b


def pair_distances(
  a: dict[str, np.ndarray], b: dict[str, np.ndarray], num_heads: int
) -> dict[str, np.ndarray]:
  """Per-prompt distances: heads_linf [B, N], chunks_linf [B, N], l1 [B], and, where the readings have
  `layers`, layers_linf [B, L] and layers_rel [B, L] (over the L-inf norm of a's representation)."""
  diff_BD = np.abs(a["hidden"].astype(np.float64) - b["hidden"].astype(np.float64))
  out = {
    "heads_linf": np.abs(a["heads"].astype(np.float64) - b["heads"]).max(axis=-1),
    "chunks_linf": diff_BD.reshape(diff_BD.shape[0], num_heads, -1).max(axis=-1),
    "l1": diff_BD.sum(axis=-1),
  }
  if "layers" in a and "layers" in b:
    layers_a = a["layers"].astype(np.float64)
    out["layers_linf"] = np.abs(layers_a - b["layers"]).max(axis=-1)
    out["layers_rel"] = out["layers_linf"] / np.maximum(
      np.abs(layers_a).max(axis=-1), np.finfo(np.float64).tiny
    )
  return out


def collapse_distance(
  params: Any, cfg: ModelConfig, ids_a: list[int], ids_b: list[int], compute_dtype: str = "float32"
) -> dict[str, np.ndarray]:
  """Distances between the last-token representations of two prompts (token ids, BOS included)."""
  pcfg = common.probe_model_cfg(cfg, compute_dtype, explicit=True)
  rep = last_token_representations(params, pcfg, [list(ids_a), list(ids_b)])
  rep_a, rep_b = ({k: v[i : i + 1] for k, v in rep.items()} for i in (0, 1))
  return {k: v[0] for k, v in pair_distances(rep_a, rep_b, cfg.num_heads).items()}


def _separator(tokenizer: Any) -> str | None:
  for sep in _SEPARATORS:
    if common.encode_chars(tokenizer, sep) is not None:
      return sep
  return None


def _stats(x: np.ndarray) -> dict[str, float]:
  """mean / min / max over prompts and heads (the mean over prompts first for min / max)."""
  per_head = x.mean(axis=0) if x.ndim == 2 else x
  return {"mean": float(per_head.mean()), "min": float(per_head.min()), "max": float(per_head.max())}


def _toys(ns) -> dict:
  tv = collapse_toys.total_variation_means()
  return {
    "total_variation": {
      "n": list(tv),
      "ours": list(tv.values()),
      "spec": [collapse_toys.PUBLISHED_TV_MEANS[n] for n in tv],
      "max_relative_error": max(abs(tv[n] / s - 1) for n, s in collapse_toys.PUBLISHED_TV_MEANS.items()),
    },
    "random_attention": {
      "n": list(ns),
      **{k: [v[k] for v in collapse_toys.random_attention_distances(ns).values()] for k in ("linf", "l1")},
    },
  }


def _layer_plots(results: dict, families: list[str], ns: list[int], dtypes) -> list[dict]:
  """Per family: the relative last-token distance of every layer's output, one line per n (fp32), and
  the largest n in each other dtype dashed, against bf16's unit roundoff 2^-8."""
  plots = []
  for family in families:
    series = []
    for dtype in dtypes:
      rows = results[f"{dtype}/{family}"]["layers_rel"]
      picks = range(len(ns)) if dtype == "float32" else [len(ns) - 1]
      for i in picks:
        series.append(
          {
            "label": f"{'fp32' if dtype == 'float32' else dtype} n={ns[i]}",
            "x": list(range(1, len(rows[i]) + 1)),
            "y": rows[i],
            "style": "-" if dtype == "float32" else "--",
          }
        )
    plots.append(
      {
        "name": f"collapse_layers_{family}",
        "title": f"collapse per layer: {family} (P_n vs P*_n; exactly equal drawn at the floor)",
        "xlabel": "layer",
        "ylabel": "L-inf distance / L-inf norm, last token",
        "logy": True,
        "series": series,
        "hlines": [{"y": BF16_UNIT_ROUNDOFF, "label": "bf16 unit roundoff 2^-8"}],
      }
    )
  return plots


def compatible(ctx: ProbeContext) -> str | None:
  return (
    None
    if common.encode_chars(ctx.tokenizer, "1") is not None
    else ("the tokenizer has no single token for the digit 1")
  )


def _collapse_cell(ctx: ProbeContext, pcfg: ModelConfig, longer: list[list[int]], num_rows: int) -> dict:
  """One (dtype, family, n) cell of `run`: the pair distances' statistics over the prompts."""
  rep_a, rep_b = pair_representations(ctx.params, pcfg, longer, ctx.batch_sharding, num_rows=num_rows)
  d = pair_distances(rep_a, rep_b, ctx.model_cfg.num_heads)
  return {
    "heads_linf": _stats(d["heads_linf"]),
    "chunks_linf": _stats(d["chunks_linf"]),
    "l1": float(d["l1"].mean()),
    "layers_linf": d["layers_linf"].mean(axis=0).tolist(),  # [L], mean over prompts
    "layers_rel": d["layers_rel"].mean(axis=0).tolist(),
  }


def run(ctx: ProbeContext) -> dict:
  opts, tok = ctx.options, ctx.tokenizer
  ns = sorted(int(n) for n in opts.collapse_ns)
  sep = _separator(tok)
  if compatible(ctx):
    reason = f"collapse probe skipped: {compatible(ctx)}."
    return {"metrics": {"skipped": reason}, "notes": [reason]}
  families = [f for f in FAMILIES if f != "ones_commas" or sep is not None]
  ctx.progress.start("collapse", len(opts.collapse_dtypes) * len(families) * len(ns))
  results: dict[str, dict] = {}
  for dtype in opts.collapse_dtypes:
    pcfg = common.probe_model_cfg(ctx.model_cfg, dtype, explicit=True)
    for family in families:
      rng = np.random.default_rng([opts.seed, FAMILIES.index(family)])
      rows: dict[str, list] = {
        "heads_linf": [],
        "chunks_linf": [],
        "l1": [],
        "layers_linf": [],
        "layers_rel": [],
      }
      for n in ns:
        ctx.progress.advance(f"{dtype} {family} n={n}")
        samples = opts.collapse_samples if family == "uniform_digits" else 1
        texts = [family_texts(family, n, rng, sep or ",") for _ in range(samples)]  # drawn in every run
        # P*_n = P_n + "1" (family_texts), one id per character: one prefill of P*_n reads both.
        longer = [[*common.start_ids(tok), *common.encode_chars(tok, p_star)] for _, p_star in texts]
        cell = ctx.cell(
          f"{dtype} {family} n={n}",
          functools.partial(_collapse_cell, ctx, pcfg, longer, opts.collapse_samples),
        )
        for name, value in cell.items():
          rows[name].append(value)
      results[f"{dtype}/{family}"] = rows
  plots, summary = [], []
  short = {"float32": "fp32", "bfloat16": "bf16"}
  for family in families:
    series = []
    for dtype in opts.collapse_dtypes:
      rows = results[f"{dtype}/{family}"]
      for reading, style in (("heads_linf", "-"), ("chunks_linf", "--")):
        series.append(
          {
            "label": f"{short.get(dtype, dtype)} {reading.split('_')[0]} (mean, min-max)",
            "x": ns,
            "y": [r["mean"] for r in rows[reading]],
            "style": style,
            "y_lo": [r["min"] for r in rows[reading]],
            "y_hi": [r["max"] for r in rows[reading]],
          }
        )
      below = [n for n, r in zip(ns, rows["heads_linf"]) if r["mean"] < BF16_RESOLUTION]
      summary.append(
        [
          f"collapse {family} {short.get(dtype, dtype)}: heads L-inf mean @ n={ns[0]} / n={ns[-1]}",
          f"{rows['heads_linf'][0]['mean']:.3g} / {rows['heads_linf'][-1]['mean']:.3g}",
        ]
      )
      summary.append(
        [
          f"collapse {family} {short.get(dtype, dtype)}: first n with heads mean < 2^-7",
          below[0] if below else "none",
        ]
      )
    plots.append(
      {
        "name": f"collapse_{family}",
        "title": f"collapse: {family} (P_n vs P*_n)",
        "xlabel": "n",
        "ylabel": "L-inf distance, last token, last layer",
        "logx": True,
        "logy": True,
        "series": series,
        "hlines": [{"y": BF16_RESOLUTION, "label": "bf16 resolution 2^-7"}],
      }
    )
  plots.extend(_layer_plots(results, families, ns, opts.collapse_dtypes))
  for family in families:
    for dtype in opts.collapse_dtypes:
      rel = results[f"{dtype}/{family}"]["layers_rel"][-1]
      below = [i + 1 for i, r in enumerate(rel) if r < BF16_UNIT_ROUNDOFF]
      summary.append(
        [
          f"collapse {family} {short.get(dtype, dtype)}: layers with relative distance < 2^-8 @ n={ns[-1]}",
          f"{len(below)} of {len(rel)}" + (f" (from layer {below[0]})" if below else ""),
        ]
      )
  plots.append(
    {
      "name": "collapse_l1",
      "title": "collapse: L1 distance of the final residual stream",
      "xlabel": "n",
      "ylabel": "L1 distance",
      "logx": True,
      "logy": True,
      "series": [
        {
          "label": f"{short.get(dt, dt)} {f}",
          "x": ns,
          "y": results[f"{dt}/{f}"]["l1"],
          "style": "-" if dt == "float32" else "--",
        }
        for f in families
        for dt in opts.collapse_dtypes
      ],
    }
  )
  toys = _toys(ns)
  tv = toys["total_variation"]
  plots.append(
    {
      "name": "collapse_toy_total_variation",
      "title": "toy: softmax total variation (App. C.3)",
      "xlabel": "n",
      "ylabel": "sum |softmax(x) - softmax(x*)|",
      "logx": True,
      "logy": True,
      "series": [
        {"label": "ours (5 seeds)", "x": tv["n"], "y": tv["ours"]},
        {"label": "docs/methods.md §6 (paper)", "x": tv["n"], "y": tv["spec"], "style": "o"},
      ],
    }
  )
  ra = toys["random_attention"]
  plots.append(
    {
      "name": "collapse_toy_random_attention",
      "title": "toy: one random attention layer, sinusoidal positions, 1^n vs 1^(n+1)",
      "xlabel": "n",
      "ylabel": "distance of last-token outputs",
      "logx": True,
      "logy": True,
      "series": [
        {"label": "L-inf", "x": ra["n"], "y": ra["linf"]},
        {"label": "L1", "x": ra["n"], "y": ra["l1"], "style": "--"},
      ],
    }
  )
  summary.append(
    ["toy total variation: max relative error vs docs/methods.md §6", round(tv["max_relative_error"], 4)]
  )
  notes = (
    []
    if sep == ","
    else [
      f"ones_commas uses separator {sep!r} (the tokenizer has no ',')."
      if sep
      else "ones_commas skipped: no separator token in the vocabulary."
    ]
  )
  return {
    "metrics": {
      "ns": ns,
      "separator": sep,
      "bf16_resolution": BF16_RESOLUTION,
      "bf16_unit_roundoff": BF16_UNIT_ROUNDOFF,
      "families": results,
      "toys": toys,
    },
    "plots": plots,
    "summary": summary,
    "notes": notes,
  }


PROBE = Probe(
  "collapse", run, "P_n vs P*_n last-token distances (fp32 / bf16) and the toy checks", compatible
)
