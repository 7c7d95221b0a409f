"""Default configuration and validation.

Every experiment in `experiments/` starts from `default_config()` and only overrides fields. Every field a
run can use is declared once, with its default, doc, choices and range, in a typed section (a frozen
dataclass, lime_jax/runtime/options.py `option`): `config.model` in lime_jax/model/model_config.py (plus the
run options beside it, `sections.ModelRunOptions`), each task's `config.data.<task>` in the task's module
(lime_jax/data/arithmetic.py, ...), and data / train / eval / mesh / seed in `sections.py`.
`default_config()` generates the ml_collections ConfigDict from them, so that a typo in an override fails
loudly (ml_collections refuses unknown keys on a locked ConfigDict) and a default is written once.

`validate()` checks every field from its declaration (`check_fields`: type, choices, range, and each
section's own rules, e.g. a task's), then the rules that read several fields together (`validate`: the
model's shapes, data vs model, batch vs Seq-VCR, ...). `lime_jax.train.loop.build` resolves a config
(init_from's source fields, the tokenizer, data.seq_len = 0 fitted) and validates the resolved config once.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from lime_jax.config.sections import (  # noqa: F401  (re-exported)
  DataConfig,
  EvalConfig,
  MeshConfig,
  ModelRunOptions,
  RunConfig,
  TextConfig,
  TrainConfig,
)
from lime_jax.data import tasks
from lime_jax.data.base import LOSS_SCOPES  # noqa: F401  (data.loss_scope's choices, re-exported)
from lime_jax.model import model_config
from lime_jax.model.model_config import LimeConfig, ModelConfig
from lime_jax.runtime import options
from lime_jax.runtime.options import fail as _fail

# Choices of the model fields: read from their dataclass field (model_config.py), never written here.
TOPOLOGIES = model_config.field_choices(ModelConfig, "topology")
LIME_ROUTERS = model_config.field_choices(LimeConfig, "router")
REMAT_POLICIES = model_config.field_choices(ModelConfig, "remat_policy")
TASKS = tasks.known_tasks()

# `config.model` fields that are run options, not model hyperparameters, with their defaults.
MODEL_RUN_OPTIONS = options.defaults(ModelRunOptions)


def default_config() -> ml_collections.ConfigDict:
  """Returns the full default config (every default from the typed sections); experiments override
  fields of it."""
  run = options.defaults(RunConfig)
  model = {**model_config.defaults(ModelConfig), **MODEL_RUN_OPTIONS}
  return ml_collections.ConfigDict({"seed": run.pop("seed"), "model": model, **run})


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A full config: the defaults, overridden by a saved config's values (a run's config.json or a
  checkpoint's meta; fields unknown today are ignored, lists become tuples where the default is one)."""
  config = default_config()

  def update(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        update(node[key], value)
      elif isinstance(node[key], tuple) and isinstance(value, list):
        node[key] = tuple(value)
      else:
        node[key] = value

  update(config, saved)
  return config


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.learning_rate': 0.001, ...}: the leaves of a config (ConfigDict or its JSON dict)."""
  out: dict[str, Any] = {}
  for key, value in node.items() if isinstance(node, (ml_collections.ConfigDict, dict)) else ():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
  """'field: old -> new' for each leaf that differs between two configs (JSON dicts), sorted by name."""
  a, b = flatten(before), flatten(after)
  return [
    f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
    for k in sorted(a.keys() | b.keys())
    if a.get(k) != b.get(k)
  ]


def check_fields(c: ml_collections.ConfigDict) -> None:
  """Checks every field on its own, from its declaration: type (a float also finite), choices and range,
  and each section's own rules (a task's: lime_jax/data/<task>.py). No file is read."""
  options.check_section(ModelConfig, c.model, "model")
  options.check_section(ModelRunOptions, c.model, "model")
  options.check_section(RunConfig, c, "")


def _validate_seq_vcr(c: ml_collections.ConfigDict) -> None:
  """Checks `model.seq_vcr` (only when enabled)."""
  s, L = c.model.seq_vcr, c.model.num_layers
  if not s.enabled:
    return
  for name in ("lambda1", "lambda2"):
    if s[name] < 0:
      _fail(f"model.seq_vcr.{name}", s[name], "must be >= 0.")
  if not s.eta > 0:
    _fail(
      "model.seq_vcr.eta",
      s.eta,
      "must be > 0 (it keeps sqrt(var + eta) differentiable); the paper uses 1e-3.",
    )
  if s.proj_dim < 0:
    _fail("model.seq_vcr.proj_dim", s.proj_dim, "must be >= 0 (0: no projection; the paper: 2048).")
  layers = tuple(s.layers)
  if not layers or any(not -L <= int(l) < L for l in layers):
    _fail(
      "model.seq_vcr.layers",
      layers,
      f"must be a non-empty tuple of block indices in [-{L}, {L - 1}] (0 = first block, -1 = final block).",
    )
  if len({int(l) % L for l in layers}) != len(layers):
    _fail("model.seq_vcr.layers", layers, "names a block twice (negative indices count from the end).")
  if c.model.topology != "plain" and any(int(l) % L != L - 1 for l in layers):
    _fail(
      "model.seq_vcr.layers",
      layers,
      f"topology {c.model.topology!r} supports Seq-VCR on the final block only (its stack takes no "
      "per-layer hook); use layers=(-1,) or topology 'plain'.",
    )
  if c.train.batch_size < 2:
    _fail("train.batch_size", c.train.batch_size, "Seq-VCR takes covariances across the batch: use >= 2.")


def _validate_backbone(m: ml_collections.ConfigDict) -> None:
  """Checks the backbone options of the pretrained families (README "Pretrained models")."""
  if m.position == "learned" and m.max_positions <= 0:
    _fail(
      "model.max_positions",
      m.max_positions,
      "model.position='learned' needs the table size (> 0), at least data.seq_len.",
    )
  if m.rope_scaling == "llama3" and not (
    m.rope_factor >= 1.0
    and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor
    and m.rope_original_max_positions > 0
  ):
    _fail(
      "model.rope_factor/rope_low_freq_factor/rope_high_freq_factor/rope_original_max_positions",
      (m.rope_factor, m.rope_low_freq_factor, m.rope_high_freq_factor, m.rope_original_max_positions),
      "llama3 RoPE needs factor >= 1, 0 < low_freq_factor < high_freq_factor and a positive length.",
    )
  if m.rope_scaling == "linear" and m.rope_factor <= 0:
    _fail("model.rope_factor", m.rope_factor, "linear RoPE divides the positions by it: use > 0.")
  if m.sliding_window < 0:
    _fail("model.sliding_window", m.sliding_window, "must be >= 0 (0: off).")
  if m.rope_local_theta < 0 or (m.rope_local_theta and not (m.sliding_window and m.position == "rope")):
    _fail(
      "model.rope_local_theta",
      m.rope_local_theta,
      "is the RoPE base of the sliding-window layers: it needs model.sliding_window > 0 and "
      "model.position='rope'; set it to 0 for rope_theta on every layer.",
    )
  layers = tuple(m.global_layers)
  if any(not 0 <= int(l) < m.num_layers for l in layers) or len(set(layers)) != len(layers):
    _fail("model.global_layers", layers, f"must be distinct layer indices in [0, {m.num_layers - 1}].")
  if layers and not m.sliding_window:
    _fail("model.global_layers", layers, "only means something with model.sliding_window > 0.")
  if layers and m.topology != "plain":
    _fail(
      "model.global_layers",
      layers,
      f"per-layer windows need topology 'plain' (topology "
      f"{m.topology!r} does not pass the layer index to the Block); use a window on every layer.",
    )
  if m.sliding_window and m.attention_impl == "cudnn" and layers:
    _fail(
      "model.attention_impl",
      m.attention_impl,
      "cuDNN takes one static window; per-layer windows (model.global_layers) need 'xla' or 'explicit'.",
    )
  for name in ("attn_logit_softcap", "final_logit_softcap", "attn_scale_dim", "norm_offset"):
    if m[name] < 0:
      _fail(f"model.{name}", m[name], "must be >= 0 (0: off).")
  if m.attn_logit_softcap and m.attention_impl == "cudnn":
    _fail(
      "model.attention_impl",
      m.attention_impl,
      "the cuDNN kernel has no logit soft-capping: use 'xla' or 'explicit' with model.attn_logit_softcap.",
    )
  if m.topology == "lime" and m.lime.router != "kv" and (m.norm_type != "rms" or m.norm_offset):
    _fail(
      "model.lime.router",
      m.lime.router,
      "the v1 routers re-normalise hidden states with RMSNorm "
      "scales: use router 'kv' with model.norm_type='layer' or model.norm_offset.",
    )


def _validate_topologies(m: ml_collections.ConfigDict) -> None:
  """Checks the sub-configs of the cross-layer topologies (always: they are cheap to check)."""
  df, hc, vr = m.denseformer, m.hyper_connections, m.value_residual
  for name in ("dilation", "period", "block_size"):
    if int(df[name]) < 1:
      _fail(f"model.denseformer.{name}", df[name], "must be a positive integer (1 = the plain DWA).")
  if df.period > m.num_layers:
    _fail(
      "model.denseformer.period",
      df.period,
      f"must be <= model.num_layers={m.num_layers}, else no block gets a DWA.",
    )
  if int(hc.num_streams) < 1:
    _fail("model.hyper_connections.num_streams", hc.num_streams, "must be a positive integer (paper: 4).")
  if not 0.0 <= vr.init_lambda <= 1.0:
    _fail("model.value_residual.init_lambda", vr.init_lambda, "must be in [0, 1] (the paper: 0.5).")


def _validate_model(m: ml_collections.ConfigDict) -> None:
  """The model's own rules: the ranges of its single fields (model_config.py declares no `check` yet) and
  the rules between its fields (shapes, backbone options, router, topologies)."""
  for name in ("num_layers", "d_model", "num_heads", "ffn_dim"):
    if int(m[name]) <= 0:
      _fail(f"model.{name}", m[name], "must be a positive integer.")
  if m.attn_head_dim < 0:
    _fail("model.attn_head_dim", m.attn_head_dim, "must be >= 0 (0: d_model / num_heads).")
  if m.d_model % m.num_heads and not m.attn_head_dim:
    _fail(
      "model.d_model",
      m.d_model,
      f"must be divisible by model.num_heads={m.num_heads} (head_dim = d_model / num_heads); "
      f"pick d_model as a multiple of {m.num_heads}, change num_heads, or set model.attn_head_dim.",
    )
  kv = m.num_kv_heads or m.num_heads
  if kv <= 0 or m.num_heads % kv:
    _fail(
      "model.num_kv_heads",
      m.num_kv_heads,
      f"must divide model.num_heads={m.num_heads} (grouped-query attention); use a divisor of "
      f"{m.num_heads}, or 0 for num_kv_heads = num_heads.",
    )
  if (m.attn_head_dim or m.d_model // m.num_heads) % 2 and m.position == "rope":
    _fail(
      "model.d_model",
      m.d_model,
      "head_dim (model.attn_head_dim or d_model / num_heads) must be even for RoPE.",
    )
  _validate_backbone(m)
  if m.rope_theta <= 0:
    _fail("model.rope_theta", m.rope_theta, "must be > 0.")
  if m.rms_eps <= 0:
    _fail("model.rms_eps", m.rms_eps, "must be > 0.")
  if m.init_std <= 0:
    _fail("model.init_std", m.init_std, "must be > 0.")
  if m.vocab_size < 0:
    _fail("model.vocab_size", m.vocab_size, "must be >= 0 (0 takes it from the task's tokenizer).")
  if not 0.0 < m.lime.top_p <= 1.0:
    _fail("model.lime.top_p", m.lime.top_p, "must be in (0, 1].")
  if m.lime.block_size <= 0:
    _fail("model.lime.block_size", m.lime.block_size, "must be a positive integer.")
  from lime_jax.model.routers import kv  # pylint: disable=import-outside-toplevel

  kv.check_group_size(int(m.lime.group_size), int(m.lime.block_size), int(m.num_layers))
  _validate_topologies(m)


def _validate_data(c: ml_collections.ConfigDict) -> None:
  """The rules between the data section and the others (the task's own rules are the task's: they are
  checked with its fields, `check_fields`)."""
  m, d = c.model, c.data
  text = d.task == tasks.TEXT_TASK
  if m.document_mask and not text:
    _fail(
      "model.document_mask",
      m.document_mask,
      "masks the documents packed into a window, so it needs "
      "data.task='text' (the synthetic tasks hold one example per row).",
    )
  if d.seq_len == 0 and text:
    _fail("data.seq_len", d.seq_len, "0 (fit to the task) is for synthetic tasks: set the window, e.g. 1024.")
  if m.position == "learned" and 0 < m.max_positions < d.seq_len:
    _fail(
      "data.seq_len",
      d.seq_len,
      f"exceeds model.max_positions={m.max_positions}, the rows of the learned position table "
      "(model.position='learned'): lower data.seq_len to at most model.max_positions.",
    )
  if c.eval.greedy and text:
    _fail(
      "eval.greedy",
      c.eval.greedy,
      "greedy answer decoding needs a question/answer task; set it False for task 'text'.",
    )
  if not text:
    return
  if d.text.source == "files" and not d.text.files:
    _fail(
      "data.text.files",
      d.text.files,
      "data.text.source='files' needs a glob of train shards, e.g. "
      "'data/train-*.parquet' (and data.text.eval_files for the held-out shards).",
    )
  if d.text.source == "files" and not d.text.eval_files:
    _fail(
      "data.text.eval_files",
      d.text.eval_files,
      "data.text.source='files' needs a glob of held-out "
      "shards for the evaluation (e.g. 'data/val-*.parquet'); they must not overlap data.text.files.",
    )
  if not d.tokenizer and m.vocab_size > 1024:
    _fail(
      "data.tokenizer",
      d.tokenizer,
      f"model.vocab_size={m.vocab_size} asks for a subword vocabulary but "
      "the text would be read as bytes (272 ids): set data.tokenizer to a tokenizer.json / folder / "
      "SentencePiece .model (the paper presets: GPT-2's tokenizer.json), or model.vocab_size=0.",
    )
  if d.text.source == "tfds" and not (d.text.data_dir or d.text.source_dir):
    _fail(
      "data.text.data_dir",
      d.text.data_dir,
      "task 'text' needs a tfds data_dir with the prepared dataset, or data.text.source_dir with "
      ".txt files to prepare it from.",
    )


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError (a ValueError) naming the field and the fix for any invalid value: first every
  field from its declaration (`check_fields`), then the rules between fields.

  Runs before any array is allocated or any function is compiled (`train.build` runs it once, on the
  resolved config). A config with data.seq_len = 0 (not yet fitted) is valid for a synthetic task.
  """
  check_fields(c)
  _validate_model(c.model)
  _validate_seq_vcr(c)
  _validate_data(c)
