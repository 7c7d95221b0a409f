"""The model's frozen config: the single source of every `config.model` field, its default and choices.

Each field is declared once here, with `option(default, doc, choices, arch)` (lime_jax/runtime/options.py's
`option`, the one every config section uses, plus the architecture kind). `lime_jax/config/__init__.py`
builds the ml_collections `config.model` from these dataclasses (`runtime.options.defaults`) and checks
every field with `choices` (and every bool) generically from this metadata; `ModelConfig.from_config` turns
a (validated) `config.model` back into the hashable dataclass the model functions take. `arch` (ARCH_KINDS)
says how a field belongs to the architecture: the checkpoint signature (lime_jax/checkpoint/structure.py)
and the fields a Hugging Face config.json describes (lime_jax/hf/families.py) are read from it
(`arch_fields`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from lime_jax.losses.seq_vcr import VARIANTS as SEQ_VCR_VARIANTS
from lime_jax.runtime import options
from lime_jax.runtime.options import defaults, field_choices, field_doc, field_types  # noqa: F401  (API)

# A field's valid values: a tuple, or a function returning one (a registry read when checked, e.g. the
# registered topologies; called lazily so that the registry's module may import this one).
Choices = tuple | Callable[[], tuple]
# How a field belongs to the architecture (`option(arch=...)`); '' (the default): it does not (dtypes of
# the activations, kernels, remat, init).
ARCH_KINDS = {
  "params": "the parameters' tree or shapes follow it: every checkpoint records it (and must agree); a "
  "pretrained config.json sets it",
  "params_if_set": "the same, recorded only when not the default (checkpoints from before the field "
  "existed still match)",
  "compute": "what the network computes from the same parameters: a config.json sets it; checkpoints "
  "do not record it",
  "checkpoint": "the parameters follow it, but no config.json describes it: every checkpoint records it",
}


def option(default: Any, doc: str = "", choices: Choices = (), arch: str = "") -> Any:
  """A dataclass field with its default, a one-line-or-more `doc`, for a choice its valid values, and how
  it belongs to the architecture (`arch`: a key of ARCH_KINDS, or '')."""
  if arch and arch not in ARCH_KINDS:
    raise ValueError(f"option(arch={arch!r}): use one of {sorted(ARCH_KINDS)} or ''.")
  return options.option(default, doc, choices, arch=arch)


def arch_fields(*kinds: str) -> tuple[str, ...]:
  """The ModelConfig fields declared with `option(arch=k)` for a k of `kinds`, in declaration order."""
  return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("arch") in kinds)


def _registry(name: str) -> tuple[str, ...]:
  """The registered names of lime_jax.model.<name> (imported when a config is checked: no cycle)."""
  import importlib  # pylint: disable=import-outside-toplevel

  return tuple(importlib.import_module(f"lime_jax.model.{name}").NAMES)


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
    0, "V; 0 in config.model: the task tokenizer's (ModelConfig.from_config fills it in).", arch="params"
  )
  num_layers: int = option(4, "L", arch="params")
  d_model: int = option(256, "D", arch="params")
  num_heads: int = option(8, "N", arch="params")
  num_kv_heads: int = option(
    0, "R (grouped-query attention when < N); 0: num_heads (no grouping).", arch="params"
  )
  ffn_dim: int = option(1024, "F", arch="params")
  rope_theta: float = option(10_000.0, "RoPE base.", arch="compute")
  rope_local_theta: float = option(
    0.0,
    "RoPE base of the sliding-window layers (Gemma 3's rope_local_base_freq); 0: rope_theta on every layer.",
    arch="compute",
  )
  rms_eps: float = option(1e-6, "eps of every norm (RMSNorm or LayerNorm).", arch="compute")
  init_std: float = option(0.02, "std of the initial weights.")
  tie_embeddings: bool = option(
    True, "the output projection is the embedding table's transpose.", arch="params"
  )
  attn_head_dim: int = option(
    0, "H decoupled from d_model / num_heads (Gemma, Qwen3); 0: d_model // num_heads.", arch="params_if_set"
  )
  norm_type: str = option(
    "rms",
    "'rms' (RMSNorm) or 'layer' (LayerNorm with bias, GPT-2); rms_eps is its eps.",
    ("rms", "layer"),
    arch="params_if_set",
  )
  norm_offset: float = option(
    0.0, "every norm scales by (norm_offset + w): Gemma stores w around 0 and uses 1.", arch="compute"
  )
  mlp_activation: str = option(
    "silu",
    "'silu', 'gelu_tanh' (tanh approximation) or 'gelu' (exact erf).",
    ("silu", "gelu_tanh", "gelu"),
    arch="compute",
  )
  mlp_gated: bool = option(
    True,
    "True: down(act(gate x) * up x) (SwiGLU / GeGLU); False: down(act(up x)) (GPT-2).",
    arch="params_if_set",
  )
  mlp_bias: bool = option(False, "biases on the MLP projections.", arch="params_if_set")
  qkv_bias: bool = option(
    False, "biases on q, k, v (Qwen2; with out_bias: Llama attention_bias, GPT-2).", arch="params_if_set"
  )
  out_bias: bool = option(False, "bias on the attention output projection.", arch="params_if_set")
  qk_norm: bool = option(
    False, "RMSNorm over head_dim of q and k, before RoPE (Qwen3, Gemma 3).", arch="params_if_set"
  )
  position: str = option(
    "rope",
    "'rope' or 'learned' (an absolute position table params['pos_embed'] [max_positions, D], GPT-2).",
    ("rope", "learned"),
    arch="params_if_set",
  )
  max_positions: int = option(
    0, "'learned': rows of the position table (positions must stay below it).", arch="params_if_set"
  )
  rope_scaling: str = option(
    "none",
    "'none', 'llama3' (Llama 3.1 / 3.2 frequency rescaling, the four rope_* fields below) or 'linear' "
    "(positions / rope_factor). With rope_local_theta, the global layers' RoPE only (Gemma 3).",
    ("none", "llama3", "linear"),
    arch="compute",
  )
  rope_factor: float = option(8.0, "llama3 / linear RoPE scaling factor.", arch="compute")
  rope_low_freq_factor: float = option(1.0, "llama3 RoPE low-frequency factor.", arch="compute")
  rope_high_freq_factor: float = option(4.0, "llama3 RoPE high-frequency factor.", arch="compute")
  rope_original_max_positions: int = option(8192, "llama3 RoPE original context length.", arch="compute")
  sliding_window: int = option(
    0, "> 0: a query at q sees keys at q - k < sliding_window only (Mistral); 0: off.", arch="compute"
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
    (), "layers exempt from the sliding window (Gemma 2: the odd ones); (): none.", arch="compute"
  )
  embed_scale: bool = option(
    False, "embeddings * sqrt(d_model), rounded to the compute dtype (Gemma).", arch="compute"
  )
  post_norms: bool = option(
    False, "a norm on the attention output and on the MLP output too (Gemma 2, 3).", arch="params_if_set"
  )
  attn_logit_softcap: float = option(
    0.0, "attention logits -> cap * tanh(logits / cap) (Gemma 2); 0: off.", arch="compute"
  )
  final_logit_softcap: float = option(0.0, "the same on the output logits; 0: off.", arch="compute")
  attn_scale_dim: float = option(
    0.0, "logits * attn_scale_dim**-0.5 (Gemma 2 query_pre_attn_scalar); 0: head_dim.", arch="compute"
  )
  compute_dtype: str = option("float32", "activations; params, logits and softmax stay fp32.", DTYPES)
  param_dtype: str = option("float32", "parameters.", DTYPES, arch="checkpoint")
  attention_impl: str = option(
    "xla",
    "'xla' (on CPU with remat 'none': a backward that recomputes the probabilities), 'cudnn' (GPU flash "
    "kernel) or 'explicit' (materialised probabilities).",
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
    arch="checkpoint",
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
    return options.from_node(cls, model_cfg, vocab_size=vocab)
