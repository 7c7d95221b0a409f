"""The model's own frozen config, built from the ml_collections `config.model`."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class LimeConfig:
  """LIMe router settings (SPEC §2); see lime_jax/model/lime.py."""

  router: str = "kv"
  init: str = "paper"
  top_p: float = 0.9
  static_init_std: float = 0.1
  block_size: int = 4
  group_size: int = 0  # kv router: layers whose far sources are mixed together; 0 = auto, 1 = off.
  keep_far: bool = True  # grouped, with remat: keep the far parts for the backward pass (L - G slots).


@dataclasses.dataclass(frozen=True)
class SeqVcrConfig:
  """Seq-VCR regulariser settings (SPEC §4); see lime_jax/model/regularizers.py."""

  enabled: bool = False
  lambda1: float = 1.0
  lambda2: float = 0.004
  eta: float = 1e-3
  variant: str = "per_position"
  layers: tuple[int, ...] = (-1,)
  proj_dim: int = 2048
  positions: str = "aligned"


@dataclasses.dataclass(frozen=True)
class DenseFormerConfig:
  """DenseFormer depth-weighted averaging (SPEC §3); see lime_jax/model/denseformer.py."""

  dilation: int = 1
  period: int = 1
  block_size: int = 8


@dataclasses.dataclass(frozen=True)
class HyperConnectionsConfig:
  """Hyper-Connections (SPEC §3); see lime_jax/model/hyper_connections.py."""

  num_streams: int = 4
  dynamic: bool = True


@dataclasses.dataclass(frozen=True)
class ValueResidualConfig:
  """Value residual learning (ResFormer, SPEC §3); see lime_jax/model/value_residual.py."""

  learnable: bool = False
  init_lambda: float = 0.5


# Topology sub-configs of ModelConfig, each built from the `config.model.<name>` of the same name.
TOPOLOGY_CONFIGS = {"denseformer": DenseFormerConfig, "hyper_connections": HyperConnectionsConfig,
                    "value_residual": ValueResidualConfig}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hashable model hyperparameters (single letters as in the shape suffixes).

  V vocab, D d_model, L layers, N query heads, R kv heads, H head dim, F ffn dim.
  """

  vocab_size: int
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 8
  num_kv_heads: int = 8
  ffn_dim: int = 1024
  rope_theta: float = 10_000.0
  rms_eps: float = 1e-6
  init_std: float = 0.02
  tie_embeddings: bool = True
  # Backbone options for pretrained families (lime_jax/hf/; config.py documents each). Defaults: LLaMA.
  attn_head_dim: int = 0  # H decoupled from D / N; 0: d_model // num_heads.
  norm_type: str = "rms"  # 'rms' | 'layer' (LayerNorm with bias).
  norm_offset: float = 0.0  # norms scale by (norm_offset + w): Gemma's 1 + w.
  mlp_activation: str = "silu"  # 'silu' | 'gelu_tanh' | 'gelu'.
  mlp_gated: bool = True  # down(act(gate x) * up x); False: down(act(up x)).
  mlp_bias: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE (Qwen3).
  position: str = "rope"  # 'rope' | 'learned' (params['pos_embed'] [max_positions, D]).
  max_positions: int = 0
  rope_scaling: str = "none"  # 'none' | 'llama3'.
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  sliding_window: int = 0  # keys at q - k < sliding_window only; 0: off.
  document_mask: bool = False  # attention within the documents of a packed row (positions restart at 0).
  global_layers: tuple[int, ...] = ()  # layers without the window (Gemma 2: odd ones).
  embed_scale: bool = False  # embeddings * sqrt(d_model) in the compute dtype (Gemma).
  post_norms: bool = False  # norms on the attention and MLP outputs (Gemma 2).
  attn_logit_softcap: float = 0.0  # cap * tanh(logits / cap); 0: off.
  final_logit_softcap: float = 0.0
  attn_scale_dim: float = 0.0  # logits * attn_scale_dim**-0.5; 0: head_dim.
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat_policy: str = "none"
  topology: str = "plain"
  lime: LimeConfig = LimeConfig()
  seq_vcr: SeqVcrConfig = SeqVcrConfig()
  denseformer: DenseFormerConfig = DenseFormerConfig()
  hyper_connections: HyperConnectionsConfig = HyperConnectionsConfig()
  value_residual: ValueResidualConfig = ValueResidualConfig()

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
  def from_config(cls, model_cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> "ModelConfig":
    """Builds from `config.model`; `vocab_size` fills a 0 in the config (taken from the tokenizer)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"lime", "seq_vcr", *TOPOLOGY_CONFIGS}
    kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
    if not kwargs.get("vocab_size"):
      if not vocab_size:
        raise ValueError("config.model.vocab_size is 0 and no tokenizer vocab size was given.")
      kwargs["vocab_size"] = int(vocab_size)
    elif vocab_size and kwargs["vocab_size"] < vocab_size:  # ids >= vocab_size would index past the table.
      raise ValueError(
          f"config.model.vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's vocabulary "
          f"({vocab_size} ids; config.data.tokenizer, or the task's own when ''): set model.vocab_size to "
          f"0 (the tokenizer's), {vocab_size}, or larger (padded rows are never produced by the data, "
          f"e.g. {-(-int(vocab_size) // 128) * 128} so that the vocab axis shards).")
    kwargs["num_kv_heads"] = kwargs.get("num_kv_heads") or kwargs["num_heads"]
    if "global_layers" in kwargs:
      kwargs["global_layers"] = tuple(int(l) for l in kwargs["global_layers"])
    lime = LimeConfig(**{f.name: model_cfg.lime[f.name] for f in dataclasses.fields(LimeConfig)
                         if "lime" in model_cfg and f.name in model_cfg.lime})
    seq_vcr = SeqVcrConfig()
    if "seq_vcr" in model_cfg:
      sv = model_cfg.seq_vcr
      seq_vcr = SeqVcrConfig(**{f.name: sv[f.name] for f in dataclasses.fields(SeqVcrConfig) if f.name in sv})
      seq_vcr = dataclasses.replace(seq_vcr, layers=tuple(int(l) for l in seq_vcr.layers))
    topology_cfgs = {name: sub(**{f.name: model_cfg[name][f.name] for f in dataclasses.fields(sub)
                                  if name in model_cfg and f.name in model_cfg[name]})
                     for name, sub in TOPOLOGY_CONFIGS.items()}
    return cls(**kwargs, lime=lime, seq_vcr=seq_vcr, **topology_cfgs)
