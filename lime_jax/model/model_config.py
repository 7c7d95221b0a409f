"""The model's frozen config: the single source of every `config.model` field, its default and choices.

Each field is declared once here, with `option(default, doc, choices)`. `lime_jax/config/__init__.py` builds
the ml_collections `config.model` from these dataclasses (`config_dict_from_dataclass`) and checks every
field with `choices` (and every bool) generically from this metadata; `ModelConfig.from_config` turns a
(validated) `config.model` back into the hashable dataclass the model functions take.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from lime_jax.losses.seq_vcr import VARIANTS as SEQ_VCR_VARIANTS

# A field's valid values: a tuple, or a function returning one (a registry read when checked, e.g. the
# registered topologies; called lazily so that the registry's module may import this one).
Choices = tuple | Callable[[], tuple]


def option(default: Any, doc: str = "", choices: Choices = ()) -> Any:
  """A dataclass field with its default, a one-line-or-more `doc` and, for a choice, its valid values."""
  return dataclasses.field(default=default, metadata={"doc": doc, "choices": choices})


def _registry(name: str) -> tuple[str, ...]:
  """The registered names of lime_jax.model.<name> (imported when a config is checked: no cycle)."""
  import importlib  # pylint: disable=import-outside-toplevel

  return tuple(importlib.import_module(f"lime_jax.model.{name}").NAMES)


def field_choices(cls: type, name: str) -> tuple:
  """The valid values of the choice field `name` of dataclass `cls`; () when it is not a choice."""
  choices = _fields(cls)[name].metadata.get("choices", ())
  return tuple(choices() if callable(choices) else choices)


def field_doc(cls: type, name: str) -> str:
  """The documentation of field `name` of dataclass `cls` ('' when it has none)."""
  return _fields(cls)[name].metadata.get("doc", "")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
  """The resolved type of each field of dataclass `cls` (the annotations are strings here)."""
  return typing.get_type_hints(cls)


def defaults(cls: type) -> dict[str, Any]:
  """{field: default} of dataclass `cls`, nested dataclasses as nested dicts."""
  out = {}
  for f in dataclasses.fields(cls):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    out[f.name] = defaults(type(value)) if dataclasses.is_dataclass(value) else value
  return out


def config_dict_from_dataclass(cls: type) -> ml_collections.ConfigDict:
  """An ml_collections ConfigDict holding the defaults of dataclass `cls` (sub-dataclasses nested)."""
  return ml_collections.ConfigDict(defaults(cls))


def from_config_dict(cls: type, node: Any, **resolved) -> Any:
  """An instance of dataclass `cls` from a ConfigDict / dict node; fields it lacks (a config saved by an
  older version) keep their defaults, keys `cls` lacks are ignored. A tuple field's items are converted to
  its item type (JSON gives lists); `resolved` sets fields outright."""
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in resolved or f.name not in node:
      continue
    value, kind = node[f.name], field_types(cls)[f.name]
    if dataclasses.is_dataclass(kind):
      kwargs[f.name] = from_config_dict(kind, value)
    elif typing.get_origin(kind) is tuple:
      kwargs[f.name] = tuple(typing.get_args(kind)[0](v) for v in value)
    else:
      kwargs[f.name] = value
  return cls(**kwargs, **resolved)


DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn", "explicit")


@dataclasses.dataclass(frozen=True)
class LimeConfig:
  """LIMe router settings (docs/methods.md §2; `config.model.lime`, used when topology == 'lime');
  model/lime.py."""

  router: str = option(
    "kv",
    "how a layer mixes the earlier layers' outputs (the registry of lime_jax/model/routers/).",
    lambda: _registry("routers"),
  )
  init: str = option(
    "paper",
    "router initialisation: 'paper' (docs/methods.md §2) or 'identity' (the plain model at "
    "step 0, for upcycling).",
    ("paper", "identity"),
  )
  top_p: float = option(0.9, "'top_p' router: the probability mass of sources kept.")
  static_init_std: float = option(0.1, "'static' router: std of the initial coefficients.")
  block_size: int = option(4, "source layers mixed per block of the triangular schedule.")
  group_size: int = option(
    0,
    "kv router: layers per group of the two-level schedule (far sources mixed "
    "once per group); 0: auto (~sqrt(num_layers), a multiple of block_size dividing "
    "num_layers), 1: the per-layer schedule.",
  )
  keep_far: bool = option(
    True,
    "grouped schedule with remat: keep each layer's far part (its mix of the "
    "slots below its group) from the forward pass (L - G buffer slots) instead of "
    "recomputing it in the backward pass; False: recompute, less memory.",
  )


@dataclasses.dataclass(frozen=True)
class SeqVcrConfig:
  """Seq-VCR (docs/methods.md §4; `config.model.seq_vcr`): a variance-covariance regulariser on chosen layers'
  outputs, added to the CE; lime_jax/model/regularizers.py."""

  enabled: bool = option(False, "add the regulariser to the loss.")
  lambda1: float = option(1.0, "variance hinge weight (App. A: 1.0 multiplication; 0.1 arithmetic / LIS).")
  lambda2: float = option(0.004, "off-diagonal covariance weight (0.004 multiplication; 0.5 arith. / LIS).")
  eta: float = option(1e-3, "keeps sqrt(var + eta) differentiable (the paper: 1e-3).")
  variant: str = option(
    "per_position",
    "'per_position' (one covariance per position) or 'batch_length' (one covariance over all N*T vectors).",
    SEQ_VCR_VARIANTS,
  )
  layers: tuple[int, ...] = option((-1,), "outputs of these blocks (0 = first block, -1 = final block).")
  proj_dim: int = option(2048, "trainable projection trained only by Seq-VCR; 0 = raw representation.")
  positions: str = option(
    "aligned",
    "positions counted: 'aligned' (real tokens in every example of the "
    "batch), 'answer' (positions predicting an answer token in every example), 'all' "
    "(every position, padding included).",
    ("aligned", "answer", "all"),
  )


@dataclasses.dataclass(frozen=True)
class DenseFormerConfig:
  """DenseFormer depth-weighted averaging (docs/methods.md §3; `config.model.denseformer`);
  model/denseformer.py."""

  dilation: int = option(1, "the DWA after block i averages X_j with j = i+1 (mod dilation) only.")
  period: int = option(1, "a DWA after every `period`-th block; the others pass their output on.")
  block_size: int = option(8, "history slots mixed per block of the triangular schedule.")


@dataclasses.dataclass(frozen=True)
class HyperConnectionsConfig:
  """Hyper-Connections (docs/methods.md §3; `config.model.hyper_connections`); model/hyper_connections.py."""

  num_streams: int = option(4, "n residual streams (expansion rate; the paper: 4).")
  dynamic: bool = option(True, "DHC (input-dependent, tanh, scale 0.01) on top of static SHC.")


@dataclasses.dataclass(frozen=True)
class ValueResidualConfig:
  """Value residual learning (ResFormer, docs/methods.md §3; `config.model.value_residual`);
  model/value_residual.py."""

  learnable: bool = option(False, "False: lambda fixed; True: one learnable lambda per layer.")
  init_lambda: float = option(0.5, "U_n = A_n(lambda V_1 + (1 - lambda) V_n) (the paper: 0.5).")


# Topology sub-configs of ModelConfig, each built from the `config.model.<name>` of the same name.
TOPOLOGY_CONFIGS = {
  "denseformer": DenseFormerConfig,
  "hyper_connections": HyperConnectionsConfig,
  "value_residual": ValueResidualConfig,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hashable model hyperparameters (single letters as in the shape suffixes).

  V vocab, D d_model, L layers, N query heads, R kv heads, H head dim, F ffn dim.

  The backbone options of the pretrained families (README "Pretrained models"; lime_jax/hf/ sets them
  from a checkpoint's config.json) default to the LLaMA backbone; each costs nothing when off.
  """

  vocab_size: int = option(
    0, "V; 0 in config.model: the task tokenizer's (ModelConfig.from_config fills it in)."
  )
  num_layers: int = option(4, "L")
  d_model: int = option(256, "D")
  num_heads: int = option(8, "N")
  num_kv_heads: int = option(0, "R (grouped-query attention when < N); 0: num_heads (no grouping).")
  ffn_dim: int = option(1024, "F")
  rope_theta: float = option(10_000.0, "RoPE base.")
  rope_local_theta: float = option(
    0.0,
    "RoPE base of the sliding-window layers (Gemma 3's rope_local_base_freq); 0: rope_theta on every layer.",
  )
  rms_eps: float = option(1e-6, "eps of every norm (RMSNorm or LayerNorm).")
  init_std: float = option(0.02, "std of the initial weights.")
  tie_embeddings: bool = option(True, "the output projection is the embedding table's transpose.")
  attn_head_dim: int = option(
    0, "H decoupled from d_model / num_heads (Gemma, Qwen3); 0: d_model // num_heads."
  )
  norm_type: str = option(
    "rms", "'rms' (RMSNorm) or 'layer' (LayerNorm with bias, GPT-2); rms_eps is its eps.", ("rms", "layer")
  )
  norm_offset: float = option(
    0.0, "every norm scales by (norm_offset + w): Gemma stores w around 0 and uses 1."
  )
  mlp_activation: str = option(
    "silu", "'silu', 'gelu_tanh' (tanh approximation) or 'gelu' (exact erf).", ("silu", "gelu_tanh", "gelu")
  )
  mlp_gated: bool = option(
    True, "True: down(act(gate x) * up x) (SwiGLU / GeGLU); False: down(act(up x)) (GPT-2)."
  )
  mlp_bias: bool = option(False, "biases on the MLP projections.")
  qkv_bias: bool = option(False, "biases on q, k, v (Qwen2; with out_bias: Llama attention_bias, GPT-2).")
  out_bias: bool = option(False, "bias on the attention output projection.")
  qk_norm: bool = option(False, "RMSNorm over head_dim of q and k, before RoPE (Qwen3, Gemma 3).")
  position: str = option(
    "rope",
    "'rope' or 'learned' (an absolute position table params['pos_embed'] [max_positions, D], GPT-2).",
    ("rope", "learned"),
  )
  max_positions: int = option(0, "'learned': rows of the position table (positions must stay below it).")
  rope_scaling: str = option(
    "none",
    "'none', 'llama3' (Llama 3.1 / 3.2 frequency rescaling, the four rope_* fields below) or 'linear' "
    "(positions / rope_factor). With rope_local_theta, the global layers' RoPE only (Gemma 3).",
    ("none", "llama3", "linear"),
  )
  rope_factor: float = option(8.0, "llama3 / linear RoPE scaling factor.")
  rope_low_freq_factor: float = option(1.0, "llama3 RoPE low-frequency factor.")
  rope_high_freq_factor: float = option(4.0, "llama3 RoPE high-frequency factor.")
  rope_original_max_positions: int = option(8192, "llama3 RoPE original context length.")
  sliding_window: int = option(
    0, "> 0: a query at q sees keys at q - k < sliding_window only (Mistral); 0: off."
  )
  document_mask: bool = option(
    False,
    "packed text: attention stays inside each document (the text "
    "pipeline gives per-document positions, restarting at 0 at each document's "
    "first token and at each window's start; RoPE / learned positions use them "
    "too). False: one causal sequence per window, documents separated only by "
    "EOS.",
  )
  global_layers: tuple[int, ...] = option(
    (), "layers exempt from the sliding window (Gemma 2: the odd ones); (): none."
  )
  embed_scale: bool = option(False, "embeddings * sqrt(d_model), rounded to the compute dtype (Gemma).")
  post_norms: bool = option(False, "a norm on the attention output and on the MLP output too (Gemma 2, 3).")
  attn_logit_softcap: float = option(0.0, "attention logits -> cap * tanh(logits / cap) (Gemma 2); 0: off.")
  final_logit_softcap: float = option(0.0, "the same on the output logits; 0: off.")
  attn_scale_dim: float = option(
    0.0, "logits * attn_scale_dim**-0.5 (Gemma 2 query_pre_attn_scalar); 0: head_dim."
  )
  compute_dtype: str = option("float32", "activations; params, logits and softmax stay fp32.", DTYPES)
  param_dtype: str = option("float32", "parameters.", DTYPES)
  attention_impl: str = option(
    "xla",
    "'xla', 'cudnn' (GPU flash kernel) or 'explicit' (materialised probabilities).",
    ATTENTION_IMPLS,
  )
  remat_policy: str = option(
    "none",
    "'none': save everything the backward pass needs; 'full': save only "
    "each layer's inputs; 'save_dots': keep matmul outputs, recompute the rest.",
    ("none", "full", "save_dots"),
  )
  topology: str = option(
    "plain",
    'the cross-layer topology (docs/methods.md §3; README "Residual topologies"; the '
    "registry of lime_jax/model/topologies.py); its sub-config below is used when "
    "selected.",
    lambda: _registry("topologies"),
  )
  lime: LimeConfig = option(LimeConfig(), "LIMe (topology 'lime').")
  seq_vcr: SeqVcrConfig = option(SeqVcrConfig(), "the Seq-VCR regulariser.")
  denseformer: DenseFormerConfig = option(DenseFormerConfig(), "topology 'denseformer'.")
  hyper_connections: HyperConnectionsConfig = option(HyperConnectionsConfig(), "its topology.")
  value_residual: ValueResidualConfig = option(ValueResidualConfig(), "topology 'value_residual'.")

  def __post_init__(self):
    if not self.num_kv_heads:  # 0: one kv head per query head.
      object.__setattr__(self, "num_kv_heads", self.num_heads)

  @property
  def head_dim(self) -> int:
    return self.attn_head_dim or self.d_model // self.num_heads

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  @property
  def pdtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_config(cls, model_cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
    """Builds from `config.model`; `vocab_size` fills a 0 in the config (taken from the tokenizer).

    Fields the config lacks (one saved by an older version) keep their defaults; config-only fields
    (`init_from`) are ignored."""
    vocab = int(model_cfg["vocab_size"]) if "vocab_size" in model_cfg else 0
    if not vocab:
      if not vocab_size:
        raise ValueError("config.model.vocab_size is 0 and no tokenizer vocab size was given.")
      vocab = int(vocab_size)
    elif vocab_size and vocab < vocab_size:  # ids >= vocab_size would index past the table.
      raise ValueError(
        f"config.model.vocab_size={vocab} is smaller than the tokenizer's vocabulary "
        f"({vocab_size} ids; config.data.tokenizer, or the task's own when ''): set model.vocab_size to "
        f"0 (the tokenizer's), {vocab_size}, or larger (padded rows are never produced by the data, "
        f"e.g. {-(-int(vocab_size) // 128) * 128} so that the vocab axis shards)."
      )
    return from_config_dict(cls, model_cfg, vocab_size=vocab)
