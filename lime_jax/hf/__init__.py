"""Pretrained Hugging Face models in lime_jax: read, convert, write back.

- `model_fields(path)`: the `config.model` fields describing a local HF folder's architecture;
- `load_pretrained(path, model_cfg=None, *, param_dtype)`: (ModelConfig, params), upcycling into any
  topology when `model_cfg` names one;
- `plan_load(path, mesh, ...)` / `load_sharded(path, mesh, ...)`: the same, sharded over a mesh by the
  training rules and read block by block (models larger than one device or the host; sharded.py);
- `save_pretrained(params, cfg, out_dir)`: config.json + model.safetensors for transformers;
- `params_to_hf_state_dict` / `hf_state_dict_to_params`: the array conversion itself.

Families (lime_jax/hf/families.py): llama (2, 3, 3.1, 3.2), mistral, qwen2 (2.5), qwen3, gemma, gemma2,
gemma3_text, gpt2. Layouts: lime_jax/hf/weights.py. torch and transformers are not needed (only the tests
use them).
"""

from __future__ import annotations

from typing import Any

from lime_jax.hf.families import ARCH_FIELDS, FAMILIES, family_for, fields_from_hf, hf_config_for
from lime_jax.hf.folder import model_fields, open_source, read_config, read_state_dict, save_pretrained
from lime_jax.hf.sharded import LoadPlan, load_pretrained, load_sharded, plan_load
from lime_jax.hf.weights import hf_state_dict_to_params, params_to_hf_state_dict
from lime_jax.model.model_config import ModelConfig

__all__ = [
  "ARCH_FIELDS",
  "FAMILIES",
  "family_for",
  "fields_from_hf",
  "hf_config_for",
  "load_pretrained",
  "load_sharded",
  "LoadPlan",
  "open_source",
  "plan_load",
  "model_fields",
  "read_config",
  "read_state_dict",
  "save_pretrained",
  "hf_state_dict_to_params",
  "params_to_hf_state_dict",
  "model_config_from_hf",
]


def model_config_from_hf(hf_config: Any, **overrides) -> ModelConfig:
  """A ModelConfig equivalent to a `transformers` config object (any family of FAMILIES)."""
  hf = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
  kwargs = {**fields_from_hf(hf), "init_std": float(hf.get("initializer_range", 0.02))}
  kwargs.update(overrides)
  return ModelConfig(**kwargs)
