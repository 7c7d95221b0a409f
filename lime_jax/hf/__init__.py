"""Pretrained Hugging Face models in lime_jax: read, convert, write back.

- `model_fields(path)`: the `config.model` fields describing a local HF folder's architecture;
- `load_pretrained(path, model_cfg=None, *, param_dtype)`: (ModelConfig, params), upcycling into any
  topology when `model_cfg` names one;
- `save_pretrained(params, cfg, out_dir)`: config.json + model.safetensors for transformers;
- `params_to_hf_state_dict` / `hf_state_dict_to_params`: the array conversion itself.

Families (lime_jax/hf/families.py): llama (2, 3, 3.1, 3.2), mistral, qwen2 (2.5), qwen3, gemma, gemma2,
gemma3_text, gpt2. Layouts: lime_jax/hf/weights.py. torch and transformers are not needed (only the tests
use them).
"""

from __future__ import annotations

from typing import Any

from lime_jax.hf.families import ARCH_FIELDS, FAMILIES, family_for, fields_from_hf, hf_config_for
from lime_jax.hf.folder import load_pretrained, model_fields, read_config, read_state_dict, save_pretrained
from lime_jax.hf.weights import hf_state_dict_to_params, params_to_hf_state_dict
from lime_jax.model.model_config import ModelConfig

__all__ = [
  "ARCH_FIELDS",
  "FAMILIES",
  "family_for",
  "fields_from_hf",
  "hf_config_for",
  "load_pretrained",
  "model_fields",
  "read_config",
  "read_state_dict",
  "save_pretrained",
  "hf_state_dict_to_params",
  "params_to_hf_state_dict",
  "llama_config_kwargs",
  "model_config_from_hf",
]


def llama_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
  """Keyword arguments for `transformers.LlamaConfig` describing the same network as `cfg`."""
  if cfg.topology != "plain":
    raise ValueError(f"HF LLaMA conversion needs config.model.topology='plain', not {cfg.topology!r}.")
  return dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.ffn_dim,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.num_kv_heads,
    head_dim=cfg.head_dim,
    rms_norm_eps=cfg.rms_eps,
    rope_theta=cfg.rope_theta,
    tie_word_embeddings=cfg.tie_embeddings,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
    initializer_range=cfg.init_std,
  )


def model_config_from_hf(hf_config: Any, **overrides) -> ModelConfig:
  """A ModelConfig equivalent to a `transformers` config object (any family of FAMILIES)."""
  hf = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
  kwargs = {**fields_from_hf(hf), "init_std": float(hf.get("initializer_range", 0.02))}
  kwargs.update(overrides)
  return ModelConfig(**kwargs)
