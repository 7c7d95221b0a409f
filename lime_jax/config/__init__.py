"""Default configuration and validation.

Every experiment in `experiments/` starts from `default_config()` and only overrides fields. Every field a
run can use is defined once, with its default, so that a typo in an override fails loudly
(ml_collections refuses unknown keys on a locked ConfigDict): `config.model` is generated from the
typed dataclasses of lime_jax/model/model_config.py (each field's default, doc and choices are written
there), plus the run options `config.model` holds beside them (`MODEL_RUN_OPTIONS`); the data, train,
eval and mesh sections are written here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from lime_jax.data import copying, counting, multiplication, tasks
from lime_jax.data.base import LOSS_SCOPES  # data.loss_scope's choices (defined in the data layer)
from lime_jax.model import model_config
from lime_jax.model.model_config import LimeConfig, ModelConfig
from lime_jax.runtime.errors import ConfigError

# Choices of the model fields: read from their dataclass field (model_config.py), never written here.
TOPOLOGIES = model_config.field_choices(ModelConfig, "topology")
LIME_ROUTERS = model_config.field_choices(LimeConfig, "router")
REMAT_POLICIES = model_config.field_choices(ModelConfig, "remat_policy")
TASKS = tasks.known_tasks()

# `config.model` fields that are run options, not model hyperparameters (ModelConfig.from_config ignores
# them), with their defaults.
MODEL_RUN_OPTIONS = {
  # Fine-tune from a checkpoint (lime_jax/train/init_from.py): 'hf:PATH' (a Hugging Face folder: config.json +
  # safetensors) or a lime_jax workdir 'DIR' / 'DIR:STEP' (default: its latest step). The architecture
  # fields come from the source (a field set here must agree with it); its parameters are loaded at
  # step 0 with a fresh optimizer; embedding rows for ids the source lacks (pause tokens) are added as
  # the mean source embedding. '' = train from scratch.
  "init_from": "",
}


def default_config() -> ml_collections.ConfigDict:
  """Returns the full default config; experiments override fields of it."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---------------------------------------------------------------- model
  # Every field, its default and its choices: lime_jax/model/model_config.py (`model_config.field_doc`).
  c.model = model_config.config_dict_from_dataclass(ModelConfig)
  c.model.update(MODEL_RUN_OPTIONS)

  # ----------------------------------------------------------------- data
  d = c.data = ml_collections.ConfigDict()
  d.task = "arithmetic"
  # Tokens per example fed to the model (inputs are seq_len, targets shifted by one). 0 (synthetic tasks):
  # fit to the task's longest example under the configured pauses and tokenizer, when the run is built.
  d.seq_len = 64
  d.loss_scope = "answer"  # one of LOSS_SCOPES.
  d.num_pause = 0  # pause tokens between question and answer (docs/methods.md §4.1).
  d.num_workers = 0  # grain worker processes; 0 reads in the main process.
  d.prefetch = 2
  d.arithmetic = ml_collections.ConfigDict()
  d.arithmetic.num_operators = 4
  d.arithmetic.cot = False
  d.arithmetic.modulus = 11
  d.arithmetic.test_fraction = 0.01  # share of the expression space reserved for the test split.
  d.multiplication = ml_collections.ConfigDict()  # Deng et al. format (docs/methods.md §5).
  d.multiplication.num_digits = 4  # n x n digits; operands have exactly n digits.
  d.multiplication.cot = False  # answer `<partial products> #### C` instead of `#### C`.
  # Without CoT: keep the `####` before C, as the official no-CoT target (da03/implicit_chain_of_thought
  # src/data.py extract_answer); False: the bare product C.
  d.multiplication.answer_marker = True
  # Test file: 'official' (the packaged official 4x4 / 5x5 files) or a path ('{n}' -> num_digits);
  # the test split reads it and train excludes its pairs; '' holds test pairs out by hash only.
  d.multiplication.eval_file = ""
  d.multiplication.test_fraction = 0.01  # hash-held-out share of the pair space (always off train).
  d.lis = ml_collections.ConfigDict()  # longest increasing subsequence (Feng et al.; docs/methods.md §5).
  d.lis.length = 50  # numbers per sequence (the paper: 50 / 80 / 100).
  d.lis.cot = False  # answer `dp_1 ... dp_L = k` instead of `k`.
  d.lis.number_range = 0  # numbers in [length+1, number_range); 0: length + 150 (the paper).
  d.lis.test_fraction = 0.01  # share of the sequence space reserved for the test split.
  # Glasses copying / counting (docs/methods.md §5; lime_jax/data/copying.py, counting.py): training tasks
  # too.
  d.copying = ml_collections.ConfigDict()
  d.copying.variant = "mixed"  # 'last' | 'first' | 'hint' | 'interleaved' | 'mixed' (one per example).
  d.copying.min_length = 1  # sequence length in digits, uniform in [min_length, max_length].
  d.copying.max_length = 32
  d.copying.test_fraction = 0.1
  d.counting = ml_collections.ConfigDict()
  d.counting.variant = "mixed"  # 'sum' | 'ones' | 'bits' | 'word' | 'mixed' (one per example).
  d.counting.min_length = 1  # items to count, uniform in [min_length, max_length].
  d.counting.max_length = 32
  d.counting.p_one = 0.7  # 'bits': probability of a 1 (the paper: 0.7).
  d.counting.test_fraction = 0.1
  d.text = ml_collections.ConfigDict()
  d.text.name = "local_text"  # tfds dataset name.
  d.text.data_dir = ""  # tfds data_dir holding the prepared array_record files.
  d.text.source_dir = ""  # folder of .txt files the local builder prepares from.
  d.text.split = "train"
  d.text.eval_split = "validation"
  d.text.feature = "text"  # feature of the tfds examples holding the document text.
  d.text.validation_fraction = 0.1  # local_text: share of paragraphs held out (fixed at preparation).
  # Where the documents come from: 'tfds' (data.text.name / data_dir via tfds.data_source, incl. the
  # local_text builder) or 'files' (shards of parquet / jsonl / txt, local or gs://; lime_jax/data/corpus.py).
  d.text.source = "tfds"
  d.text.files = ""  # 'files': comma-separated globs of the train shards, e.g. 'data/train-*.parquet'.
  d.text.eval_files = ""  # 'files': globs of the held-out shards ('' = none: set them for eval).
  d.text.file_format = "auto"  # 'auto' (from the extension) | 'parquet' | 'jsonl' | 'txt'.
  # Bytes of a txt / jsonl shard that are not UTF-8: 'strict' (fail naming the file, line and byte),
  # 'replace' (U+FFFD) or 'ignore' (dropped).
  d.text.decode_errors = "strict"
  # Tokenizer of the text (and of any task that reads it): '' = the task's own (text: UTF-8 bytes, 272 ids);
  # else a tokenizer.json, a folder with one (HF layout) or a SentencePiece .model (data/subword.py).
  d.tokenizer = ""

  # ---------------------------------------------------------------- train
  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 64  # global batch, in sequences.
  t.num_steps = 1000
  t.learning_rate = 1e-3
  t.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio.
  t.warmup_steps = 100
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0
  t.router_lr_multiplier = 10.0  # LIMe router lr = multiplier * learning_rate (docs/methods.md §2.1).
  t.log_every = 25
  t.eval_every = 0  # 0: evaluate only at the end.
  t.checkpoint_every = 200
  t.keep_checkpoints = 3
  t.async_checkpoint = True
  t.stop_at_step = 0  # >0: checkpoint and exit after this step, schedule intact (split a run over job slots).
  # jax's persistent compilation cache (lime_jax/runtime/caches.py): '' = $JAX_COMPILATION_CACHE_DIR if
  # set, else <user cache dir>/jax_cache ($LIME_JAX_CACHE_DIR, $XDG_CACHE_HOME/lime_jax or ~/.cache/lime_jax);
  # 'none' = off; anything else is the directory. A repeated start then skips the XLA compiles.
  t.compilation_cache_dir = ""
  # Weights & Biases sink beside TensorBoard and JSONL (optional extra: pip install -e '.[wandb]').
  t.wandb = ml_collections.ConfigDict()
  t.wandb.project = ""  # '' = off; else the wandb project the run logs to.
  t.wandb.entity = ""  # '' = wandb's default entity.
  t.wandb.name = ""  # '' = the workdir's name.
  t.wandb.mode = "online"  # 'online' | 'offline' (sync later with `wandb sync`) | 'disabled'.

  # ----------------------------------------------------------------- eval
  e = c.eval = ml_collections.ConfigDict()
  e.num_examples = 512
  e.batch_size = 128
  # Greedy decoding of the answers (lime_jax/model/decode.py): exact match, per-answer-position accuracy and
  # the matrix entropy of the Seq-VCR layer (lime_jax/evals/greedy_answers.py); question/answer tasks only;
  # single-process runs only (skipped when jax.process_count() > 1).
  e.greedy = False

  # ----------------------------------------------------------------- mesh
  mesh = c.mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1 fills the remaining devices.
  mesh.fsdp = 1
  mesh.tensor = 1
  return c


def _fail(field: str, value, fix: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is invalid: {fix}")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.learning_rate': 0.001, ...}: the leaves of a config (ConfigDict or its JSON dict)."""
  out: dict[str, Any] = {}
  for key, value in node.items() if isinstance(node, (ml_collections.ConfigDict, dict)) else ():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def non_finite_fields(config: Any) -> dict[str, Any]:
  """{dotted name: value} of the float fields (or tuples of floats) holding NaN or +-Inf."""
  return {
    k: v
    for k, v in flatten(config).items()
    if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, list) else [v]))
  }


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
  """'field: old -> new' for each leaf that differs between two configs (JSON dicts), sorted by name."""
  a, b = flatten(before), flatten(after)
  return [
    f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
    for k in sorted(a.keys() | b.keys())
    if a.get(k) != b.get(k)
  ]


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    _fail(field, value, f"choose one of {', '.join(map(repr, choices))}.")


def _check_typed_fields(node: ml_collections.ConfigDict, cls: type, prefix: str) -> None:
  """Checks every field of dataclass `cls` in `node` from its declaration: a choice field holds one of
  its choices, a bool field True or False; sub-dataclasses recursively. `prefix`: the node's dotted name."""
  kinds = model_config.field_types(cls)
  for f in dataclasses.fields(cls):
    name, kind, value = f"{prefix}.{f.name}", kinds[f.name], node[f.name]
    if dataclasses.is_dataclass(kind):
      _check_typed_fields(value, kind, name)
    elif choices := model_config.field_choices(cls, f.name):
      _check_choice(name, value, choices)
    elif kind is bool and not isinstance(value, bool):
      _fail(name, value, "must be True or False.")


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


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field and the fix for any out-of-range value.

  Runs before any array is allocated or any function is compiled.
  """
  m, d, t = c.model, c.data, c.train
  for name, value in non_finite_fields(c).items():  # NaN passes every `<=` check below
    _fail(name, value, "must be a finite number (NaN and Inf are refused).")
  _check_typed_fields(m, ModelConfig, "model")  # every choice and bool of config.model
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
  if m.document_mask and c.data.task != "text":
    _fail(
      "model.document_mask",
      m.document_mask,
      "masks the documents packed into a window, so it needs "
      "data.task='text' (the synthetic tasks hold one example per row).",
    )
  if m.rope_theta <= 0:
    _fail("model.rope_theta", m.rope_theta, "must be > 0.")
  if m.rms_eps <= 0:
    _fail("model.rms_eps", m.rms_eps, "must be > 0.")
  if m.init_std <= 0:
    _fail("model.init_std", m.init_std, "must be > 0.")
  if m.vocab_size < 0:
    _fail("model.vocab_size", m.vocab_size, "must be >= 0 (0 takes it from the task's tokenizer).")
  if not isinstance(m.init_from, str) or m.init_from.strip() in ("hf:", ":"):
    _fail(
      "model.init_from",
      m.init_from,
      "use '' (from scratch), 'hf:/path/to/hf_folder' or a lime_jax workdir 'DIR[:STEP]'.",
    )
  if m.init_from.startswith("<required"):
    _fail(
      "model.init_from",
      m.init_from,
      "this preset fine-tunes a pretrained model: pass "
      "--config.model.init_from=hf:/path/to/hf_folder (e.g. GPT-2 small saved with save_pretrained).",
    )
  if not 0.0 < m.lime.top_p <= 1.0:
    _fail("model.lime.top_p", m.lime.top_p, "must be in (0, 1].")
  if m.lime.block_size <= 0:
    _fail("model.lime.block_size", m.lime.block_size, "must be a positive integer.")
  from lime_jax.model.routers import kv  # pylint: disable=import-outside-toplevel

  kv.check_group_size(int(m.lime.group_size), int(m.lime.block_size), int(m.num_layers))
  _validate_topologies(m)
  _validate_seq_vcr(c)

  _check_choice("data.task", d.task, TASKS)
  _check_choice("data.loss_scope", d.loss_scope, LOSS_SCOPES)
  if d.seq_len == 0 and d.task == "text":
    _fail("data.seq_len", d.seq_len, "0 (fit to the task) is for synthetic tasks: set the window, e.g. 1024.")
  if d.seq_len != 0 and d.seq_len < 4:
    _fail("data.seq_len", d.seq_len, "must be at least 4 tokens, or 0 to fit the task's longest example.")
  if d.num_pause < 0:
    _fail("data.num_pause", d.num_pause, "must be >= 0.")
  if d.arithmetic.num_operators < 1:
    _fail("data.arithmetic.num_operators", d.arithmetic.num_operators, "must be >= 1.")
  if not 0.0 < d.arithmetic.test_fraction < 0.5:
    _fail("data.arithmetic.test_fraction", d.arithmetic.test_fraction, "must be in (0, 0.5).")
  mult = d.multiplication
  if not 1 <= mult.num_digits <= 18:
    _fail("data.multiplication.num_digits", mult.num_digits, "must be in [1, 18] (the paper: 4, 5).")
  if mult.eval_file == multiplication.OFFICIAL:
    multiplication.check_official_digits(mult.num_digits)
  if not 0.0 < mult.test_fraction < 0.5:
    _fail("data.multiplication.test_fraction", mult.test_fraction, "must be in (0, 0.5).")
  if d.lis.length < 3:
    _fail("data.lis.length", d.lis.length, "must be >= 3 (the paper: 50, 80, 100).")
  if d.lis.number_range and d.lis.number_range < 2 * d.lis.length + 1:
    _fail(
      "data.lis.number_range",
      d.lis.number_range,
      f"must be 0 (length + 150, the paper) or >= 2*length+1 = {2 * d.lis.length + 1} (numbers "
      "lie in [length+1, number_range); a planted run can need `length` distinct values).",
    )
  if not 0.0 < d.lis.test_fraction < 0.5:
    _fail("data.lis.test_fraction", d.lis.test_fraction, "must be in (0, 0.5).")
  for name in ("copying", "counting"):
    sub = d[name]
    if not 1 <= sub.min_length <= sub.max_length:
      _fail(
        f"data.{name}.min_length/max_length",
        (sub.min_length, sub.max_length),
        "must satisfy 1 <= min_length <= max_length.",
      )
    if not 0.0 < sub.test_fraction < 0.5:
      _fail(f"data.{name}.test_fraction", sub.test_fraction, "must be in (0, 0.5).")
  _check_choice("data.copying.variant", d.copying.variant, copying.CopyingTask.variant_choices())
  _check_choice("data.counting.variant", d.counting.variant, counting.CountingTask.variant_choices())
  if not 0.0 <= d.counting.p_one <= 1.0:
    _fail("data.counting.p_one", d.counting.p_one, "must be in [0, 1].")
  if not 0.0 < d.text.validation_fraction < 1.0:
    _fail("data.text.validation_fraction", d.text.validation_fraction, "must be in (0, 1).")
  if d.num_workers < 0 or d.prefetch < 0:
    _fail("data.num_workers/prefetch", (d.num_workers, d.prefetch), "must be >= 0.")
  modulus = d.arithmetic.modulus
  if modulus < 2 or modulus > 100 or any(modulus % k == 0 for k in range(2, int(modulus**0.5) + 1)):
    _fail(
      "data.arithmetic.modulus",
      modulus,
      "must be a prime <= 100 (division needs every non-zero number to have an inverse); the paper uses 11.",
    )
  _check_choice("data.text.source", d.text.source, ("tfds", "files"))
  _check_choice("data.text.file_format", d.text.file_format, ("auto", "parquet", "jsonl", "txt"))
  _check_choice("data.text.decode_errors", d.text.decode_errors, ("strict", "replace", "ignore"))
  if d.task == "text" and d.text.source == "files" and not d.text.files:
    _fail(
      "data.text.files",
      d.text.files,
      "data.text.source='files' needs a glob of train shards, e.g. "
      "'data/train-*.parquet' (and data.text.eval_files for the held-out shards).",
    )
  if d.task == "text" and d.text.source == "files" and not d.text.eval_files:
    _fail(
      "data.text.eval_files",
      d.text.eval_files,
      "data.text.source='files' needs a glob of held-out "
      "shards for the evaluation (e.g. 'data/val-*.parquet'); they must not overlap data.text.files.",
    )
  if d.task == "text" and not d.tokenizer and m.vocab_size > 1024:
    _fail(
      "data.tokenizer",
      d.tokenizer,
      f"model.vocab_size={m.vocab_size} asks for a subword vocabulary but "
      "the text would be read as bytes (272 ids): set data.tokenizer to a tokenizer.json / folder / "
      "SentencePiece .model (the paper presets: GPT-2's tokenizer.json), or model.vocab_size=0.",
    )
  if d.task == "text" and d.text.source == "tfds" and not (d.text.data_dir or d.text.source_dir):
    _fail(
      "data.text.data_dir",
      d.text.data_dir,
      "task 'text' needs a tfds data_dir with the prepared dataset, or data.text.source_dir with "
      ".txt files to prepare it from.",
    )
  if c.eval.greedy and d.task == "text":
    _fail(
      "eval.greedy",
      c.eval.greedy,
      "greedy answer decoding needs a question/answer task; set it False for task 'text'.",
    )

  if t.batch_size <= 0:
    _fail("train.batch_size", t.batch_size, "must be a positive integer.")
  if t.num_steps <= 0:
    _fail("train.num_steps", t.num_steps, "must be a positive integer.")
  if t.learning_rate <= 0:
    _fail("train.learning_rate", t.learning_rate, "must be > 0 (e.g. 1e-3).")
  if not 0.0 <= t.min_lr_ratio <= 1.0:
    _fail("train.min_lr_ratio", t.min_lr_ratio, "must be in [0, 1].")
  if t.warmup_steps < 0:
    _fail("train.warmup_steps", t.warmup_steps, "must be >= 0.")
  if t.weight_decay < 0:
    _fail("train.weight_decay", t.weight_decay, "must be >= 0.")
  if not (0.0 <= t.b1 < 1.0 and 0.0 <= t.b2 < 1.0):
    _fail("train.b1/b2", (t.b1, t.b2), "Adam betas must be in [0, 1).")
  if t.grad_clip < 0:
    _fail("train.grad_clip", t.grad_clip, "must be >= 0 (0 disables clipping).")
  if t.router_lr_multiplier <= 0:
    _fail("train.router_lr_multiplier", t.router_lr_multiplier, "must be > 0.")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if t[name] <= 0:
      _fail(f"train.{name}", t[name], "must be a positive integer.")
  if t.stop_at_step < 0:
    _fail("train.stop_at_step", t.stop_at_step, "must be >= 0 (0: run to train.num_steps).")
  if t.eval_every < 0:
    _fail("train.eval_every", t.eval_every, "must be >= 0 (0: only at the end).")
  if not isinstance(t.compilation_cache_dir, str):
    _fail(
      "train.compilation_cache_dir",
      t.compilation_cache_dir,
      "must be a string: '' (the user cache dir), 'none' (off) or a directory.",
    )
  _check_choice("train.wandb.mode", t.wandb.mode, ("online", "offline", "disabled"))
  if c.eval.num_examples <= 0 or c.eval.batch_size <= 0:
    _fail("eval.num_examples/batch_size", (c.eval.num_examples, c.eval.batch_size), "must be > 0.")
  for axis in ("data", "fsdp", "tensor"):
    if c.mesh[axis] == 0 or c.mesh[axis] < -1:
      _fail(f"mesh.{axis}", c.mesh[axis], "must be a positive size or -1 (fill the remaining devices).")
