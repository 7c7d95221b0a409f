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
  block_size: int = 8


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
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat_policy: str = "none"
  topology: str = "plain"
  lime: LimeConfig = LimeConfig()

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  @property
  def pdtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_config(cls, model_cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> "ModelConfig":
    """Builds from `config.model`; `vocab_size` fills a 0 in the config (taken from the tokenizer)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"lime"}
    kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
    if not kwargs.get("vocab_size"):
      if not vocab_size:
        raise ValueError("config.model.vocab_size is 0 and no tokenizer vocab size was given.")
      kwargs["vocab_size"] = int(vocab_size)
    kwargs["num_kv_heads"] = kwargs.get("num_kv_heads") or kwargs["num_heads"]
    lime = LimeConfig(**{f.name: model_cfg.lime[f.name] for f in dataclasses.fields(LimeConfig)
                         if "lime" in model_cfg and f.name in model_cfg.lime})
    return cls(**kwargs, lime=lime)
