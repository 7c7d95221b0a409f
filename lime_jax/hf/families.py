"""Hugging Face `config.json` <-> lime_jax backbone fields, per family.

Every family is a set of `config.model` options of the one scanned backbone (lime_jax/config/__init__.py);
nothing here builds a second model. `fields_from_hf` reads a config.json dict (no `transformers` needed) and
refuses, naming the HF field, anything the backbone does not implement; `hf_config_for` writes the
config.json of the family a ModelConfig belongs to, and checks that reading it back gives the same fields.

| family  | model_type  | what it sets                                                                      |
|---------|-------------|-----------------------------------------------------------------------------------|
| llama   | llama       | defaults; `attention_bias` -> qkv_bias + out_bias, `mlp_bias`, llama3/linear RoPE |
| mistral | mistral     | sliding_window (every layer)                                                      |
| qwen2   | qwen2       | qkv_bias; sliding layers from `layer_types` / `max_window_layers`                 |
| qwen3   | qwen3       | qk_norm; `attention_bias`                                                         |
| gemma   | gemma       | norm_offset 1 (1 + w), embed_scale, GeGLU (gelu_tanh)                             |
| gemma2  | gemma2      | gemma's + post_norms, attn / final logit soft-caps, attn_scale_dim, global_layers |
| gemma3  | gemma3_text | gemma2's + qk_norm, rope_local_theta (sliding layers' RoPE base), linear RoPE     |
|         |             | on the global layers; sliding layers: `layer_types` / `sliding_window_pattern`    |
| gpt2    | gpt2        | LayerNorm, learned positions, GELU MLP, all biases (Conv1D layout)                |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lime_jax.model import model_config
from lime_jax.model.model_config import ModelConfig

# The config.model fields that describe a checkpoint's architecture (what `model_fields` returns): those
# a config.json sets, declared with `option(arch=...)` in lime_jax/model/model_config.py.
ARCH_FIELDS = model_config.arch_fields("params", "params_if_set", "compute")
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2")
ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "gemma": "GemmaForCausalLM",
  "gemma2": "Gemma2ForCausalLM",
  "gemma3_text": "Gemma3ForCausalLM",
  "gpt2": "GPT2LMHeadModel",
}
# HF activation names -> config.model.mlp_activation ('gelu_new' is GPT-2's tanh approximation).
_ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
  "gelu": "gelu",
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name in ARCH_FIELDS}
_REQUIRED = object()


def refuse(field: str, value: Any, why: str) -> None:
  """Raises the error for a checkpoint feature lime_jax does not implement."""
  raise ValueError(f"config.json {field}={value!r}: {why}")


def _get(hf: dict, key: str, default: Any = _REQUIRED) -> Any:
  value = hf.get(key, default)
  if value is _REQUIRED or (value is None and default is _REQUIRED):
    raise ValueError(f"config.json lacks {key!r}, which a {hf.get('model_type')!r} checkpoint needs.")
  return value


def _activation(hf: dict, key: str, gemma: bool = False) -> str:
  name = _get(hf, key)
  if gemma and name == "gelu":  # HF Gemma reads its legacy 'gelu' as the tanh approximation
    name = "gelu_pytorch_tanh"
  if name not in _ACTIVATIONS:
    refuse(key, name, f"lime_jax implements {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def _rope(hf: dict) -> dict[str, Any]:
  """RoPE theta and scaling from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  where = "rope_parameters" if params else "rope_scaling"
  merged = {**legacy, **params}
  if any(isinstance(v, dict) for v in merged.values()):
    refuse(where, merged, "per-layer-type RoPE parameters are not implemented.")
  return _rope_entry(hf, merged, where, float(hf.get("rope_theta", 10_000.0)))


def _rope_entry(hf: dict, entry: dict, where: str, theta: float) -> dict[str, Any]:
  """rope_theta (`theta` when the entry has none) and the scaling fields of one RoPE parameter dict."""
  rope_type = entry.get("rope_type", entry.get("type", "default"))
  if float(entry.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
    refuse(
      f"{where}.partial_rotary_factor",
      entry.get("partial_rotary_factor"),
      "lime_jax rotates every channel of the head.",
    )
  out = {"rope_theta": float(entry.get("rope_theta", theta))}
  if rope_type == "llama3":
    out.update(
      rope_scaling="llama3",
      rope_factor=float(entry["factor"]),
      rope_low_freq_factor=float(entry["low_freq_factor"]),
      rope_high_freq_factor=float(entry["high_freq_factor"]),
      rope_original_max_positions=int(entry["original_max_position_embeddings"]),
    )
  elif rope_type == "linear":
    out.update(rope_scaling="linear", rope_factor=float(entry["factor"]))
  elif rope_type != "default":
    refuse(f"{where}.rope_type", rope_type, "lime_jax implements 'default', 'llama3' and 'linear' RoPE only.")
  return out


def _gemma3_rope(hf: dict) -> dict[str, Any]:
  """Gemma 3's two RoPE bases: `rope_parameters` keyed by layer type (transformers 5), or `rope_theta` +
  `rope_scaling` (global layers) and `rope_local_base_freq` (sliding layers). Scaling: global layers only."""
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  if any(isinstance(v, dict) for v in params.values()):
    for key, value in params.items():
      if key not in ("full_attention", "sliding_attention"):
        refuse(
          f"rope_parameters.{key}", value, "Gemma 3 keys its RoPE by 'full_attention' / 'sliding_attention'."
        )
    full, local = dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
    where, local_where = "rope_parameters.full_attention", "rope_parameters.sliding_attention"
  else:
    full, local = dict(params), {}
    where, local_where = ("rope_parameters" if params else "rope_scaling"), "rope_local_base_freq"
  if legacy:  # as HF: the legacy scaling updates the global layers' entry
    full, where = {**full, **legacy}, "rope_scaling"
  out = _rope_entry(hf, full, where, float(hf.get("rope_theta") or 1_000_000.0))
  local_type = local.get("rope_type", local.get("type", "default"))
  if local_type != "default":
    refuse(f"{local_where}.rope_type", local_type, "lime_jax scales the global layers' RoPE only.")
  local_rope = _rope_entry(hf, local, local_where, float(hf.get("rope_local_base_freq") or 10_000.0))
  return {**out, "rope_local_theta": local_rope["rope_theta"]}


def _window(hf: dict, all_layers: bool) -> dict[str, Any]:
  """sliding_window + global_layers from `layer_types`, else every layer (Mistral) or none."""
  window, L = hf.get("sliding_window"), int(_get(hf, "num_hidden_layers"))
  layer_types = hf.get("layer_types")
  if layer_types is None and hf.get("use_sliding_window"):  # Qwen2/3 without layer_types
    layer_types = [
      "sliding_attention" if i >= hf.get("max_window_layers", 0) else "full_attention" for i in range(L)
    ]
  if layer_types is None:
    layer_types = ["sliding_attention" if (window and all_layers) else "full_attention"] * L
  for i, kind in enumerate(layer_types):
    if kind not in ("sliding_attention", "full_attention"):
      refuse(f"layer_types[{i}]", kind, "lime_jax implements 'full_attention' and 'sliding_attention'.")
  if len(layer_types) != L:
    refuse("layer_types", layer_types, f"needs one entry per layer (num_hidden_layers={L}).")
  if "sliding_attention" not in layer_types:
    return {}
  if not window:
    refuse("sliding_window", window, "layer_types has sliding layers, so sliding_window must be > 0.")
  return {
    "sliding_window": int(window),
    "global_layers": tuple(i for i, kind in enumerate(layer_types) if kind == "full_attention"),
  }


def _common(hf: dict, tie_default: bool, rope: Callable[[dict], dict[str, Any]] = _rope) -> dict[str, Any]:
  """The fields every LLaMA-layout family shares (`rope` reads the RoPE fields)."""
  D, N = int(_get(hf, "hidden_size")), int(_get(hf, "num_attention_heads"))
  head_dim = int(hf.get("head_dim") or D // N)
  return {
    "vocab_size": int(_get(hf, "vocab_size")),
    "num_layers": int(_get(hf, "num_hidden_layers")),
    "d_model": D,
    "num_heads": N,
    "num_kv_heads": int(hf.get("num_key_value_heads") or N),
    "ffn_dim": int(_get(hf, "intermediate_size")),
    "attn_head_dim": 0 if head_dim * N == D else head_dim,
    "rms_eps": float(hf.get("rms_norm_eps", 1e-6)),
    "tie_embeddings": bool(hf.get("tie_word_embeddings", tie_default)),
    **rope(hf),
  }


def _llama(hf: dict) -> dict[str, Any]:
  if int(hf.get("pretraining_tp", 1)) != 1:
    refuse("pretraining_tp", hf["pretraining_tp"], "only 1 is implemented.")
  bias = bool(hf.get("attention_bias", False))
  return {
    **_common(hf, False),
    "mlp_activation": _activation(hf, "hidden_act"),
    "qkv_bias": bias,
    "out_bias": bias,
    "mlp_bias": bool(hf.get("mlp_bias", False)),
  }


def _mistral(hf: dict) -> dict[str, Any]:
  return {**_common(hf, False), "mlp_activation": _activation(hf, "hidden_act"), **_window(hf, True)}


def _qwen2(hf: dict) -> dict[str, Any]:
  fields = {**_common(hf, False), "mlp_activation": _activation(hf, "hidden_act"), "qkv_bias": True}
  if hf.get("use_sliding_window"):
    fields.update(_window(hf, False))
  return fields


def _qwen3(hf: dict) -> dict[str, Any]:
  fields = _qwen2(hf)
  bias = bool(hf.get("attention_bias", False))
  return {**fields, "qkv_bias": bias, "out_bias": bias, "qk_norm": True}


def _gemma(hf: dict) -> dict[str, Any]:
  bias = bool(hf.get("attention_bias", False))
  return {
    **_common(hf, True),
    "mlp_activation": _activation(hf, "hidden_act", gemma=True),
    "norm_offset": 1.0,
    "embed_scale": True,
    "qkv_bias": bias,
    "out_bias": bias,
  }


def _gemma2(hf: dict, rope: Callable[[dict], dict[str, Any]] = _rope) -> dict[str, Any]:
  bias = bool(hf.get("attention_bias", False))
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
  scalar = float(hf.get("query_pre_attn_scalar") or head_dim)
  return {
    **_common(hf, True, rope),
    "mlp_activation": _activation(hf, "hidden_activation", gemma=True),
    "norm_offset": 1.0,
    "embed_scale": True,
    "post_norms": True,
    "qkv_bias": bias,
    "out_bias": bias,
    "attn_scale_dim": 0.0 if scalar == head_dim else scalar,
    "attn_logit_softcap": float(hf.get("attn_logit_softcapping") or 0.0),
    "final_logit_softcap": float(hf.get("final_logit_softcapping") or 0.0),
    **_window(hf, False),
  }


def _gemma3(hf: dict) -> dict[str, Any]:
  """Gemma 2's layout with q/k norms and a RoPE base per layer type (no soft-caps by default)."""
  layer_types = hf.get("layer_types")
  if layer_types is None:  # older configs: every `sliding_window_pattern`-th layer is global (HF's default 6)
    pattern = int(hf.get("sliding_window_pattern") or 6)
    L = int(_get(hf, "num_hidden_layers"))
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(L)]
  fields = {**_gemma2({**hf, "layer_types": layer_types}, _gemma3_rope), "qk_norm": True}
  if not fields.get("sliding_window"):  # no sliding layer: rope_theta everywhere
    fields.pop("rope_local_theta")
  return fields


def _gpt2(hf: dict) -> dict[str, Any]:
  if hf.get("scale_attn_by_inverse_layer_idx"):
    refuse("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling is not implemented.")
  if hf.get("add_cross_attention"):
    refuse("add_cross_attention", True, "lime_jax is decoder-only.")
  D, N = int(_get(hf, "n_embd")), int(_get(hf, "n_head"))
  return {
    "vocab_size": int(_get(hf, "vocab_size")),
    "num_layers": int(_get(hf, "n_layer")),
    "d_model": D,
    "num_heads": N,
    "num_kv_heads": N,
    "ffn_dim": int(hf.get("n_inner") or 4 * D),
    "rms_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
    "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
    "norm_type": "layer",
    "position": "learned",
    "max_positions": int(_get(hf, "n_positions")),
    "mlp_activation": _activation(hf, "activation_function"),
    "mlp_gated": False,
    "mlp_bias": True,
    "qkv_bias": True,
    "out_bias": True,
    "attn_scale_dim": 0.0 if hf.get("scale_attn_weights", True) else 1.0,
  }


_READERS: dict[str, Callable[[dict], dict[str, Any]]] = {
  "llama": _llama,
  "mistral": _mistral,
  "qwen2": _qwen2,
  "qwen3": _qwen3,
  "gemma": _gemma,
  "gemma2": _gemma2,
  "gemma3_text": _gemma3,
  "gpt2": _gpt2,
}


def fields_from_hf(hf: dict) -> dict[str, Any]:
  """Every ARCH_FIELDS value of the checkpoint described by a config.json dict (defaults filled in)."""
  model_type = hf.get("model_type")
  if model_type == "gemma3":
    refuse(
      "model_type",
      model_type,
      "a multimodal Gemma 3 (Gemma3ForConditionalGeneration) config: lime_jax reads the text model, "
      "model_type 'gemma3_text' (Gemma3ForCausalLM); pass a text-only checkpoint.",
    )
  if model_type not in _READERS:
    refuse("model_type", model_type, f"lime_jax reads the families {', '.join(FAMILIES)}.")
  if hf.get("quantization_config"):
    refuse("quantization_config", hf["quantization_config"], "quantised checkpoints are not read.")
  if hf.get("use_bidirectional_attention"):
    refuse("use_bidirectional_attention", True, "lime_jax's attention is causal.")
  return {**_DEFAULTS, **_READERS[model_type](hf)}


def fields_of(cfg: ModelConfig) -> dict[str, Any]:
  """The ARCH_FIELDS values of a ModelConfig."""
  return {name: getattr(cfg, name) for name in ARCH_FIELDS}


def _relevant(fields: dict[str, Any]) -> dict[str, Any]:
  """Fields with those that have no effect in this configuration dropped and the defaults' equivalents
  normalised (for comparisons)."""
  out = dict(fields)
  if out["attn_head_dim"] * out["num_heads"] == out["d_model"]:
    out["attn_head_dim"] = 0
  if out["attn_scale_dim"] == (out["attn_head_dim"] or out["d_model"] // out["num_heads"]):
    out["attn_scale_dim"] = 0.0
  if out["position"] == "learned" or out["rope_scaling"] != "llama3":
    for name in ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions"):
      out.pop(name)
  if out["position"] == "learned" or out["rope_scaling"] == "none":
    out.pop("rope_factor")
    if out["position"] == "rope" and out["rope_local_theta"] == out["rope_theta"]:
      out["rope_local_theta"] = 0.0  # the same base on every layer
  if out["position"] == "learned":
    out.pop("rope_theta"), out.pop("rope_scaling")
  else:
    out.pop("max_positions")
  if not out["sliding_window"]:
    out.pop("global_layers")
  if not out["sliding_window"] or out["position"] == "learned":
    out.pop("rope_local_theta")
  return out


def family_for(cfg: ModelConfig) -> str:
  """The HF family whose config.json can describe `cfg` (checked by `hf_config_for`)."""
  if cfg.position == "learned":
    return "gpt2"
  if cfg.post_norms:
    return "gemma3_text" if cfg.qk_norm else "gemma2"
  if cfg.norm_offset or cfg.embed_scale:
    return "gemma"
  if cfg.qk_norm:
    return "qwen3"
  if cfg.qkv_bias and not cfg.out_bias:
    return "qwen2"
  if cfg.sliding_window:
    return "mistral"
  return "llama"


def _rope_dict(cfg: ModelConfig) -> dict[str, Any]:
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling == "linear":
    rope.update(rope_type="linear", factor=cfg.rope_factor)
  if cfg.rope_scaling == "llama3":
    rope.update(
      rope_type="llama3",
      factor=cfg.rope_factor,
      low_freq_factor=cfg.rope_low_freq_factor,
      high_freq_factor=cfg.rope_high_freq_factor,
      original_max_position_embeddings=cfg.rope_original_max_positions,
    )
  return rope


def _layer_types(cfg: ModelConfig) -> list[str]:
  return [
    "full_attention" if (not cfg.sliding_window or l in cfg.global_layers) else "sliding_attention"
    for l in range(cfg.num_layers)
  ]


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else float(x)


def hf_config_for(cfg: ModelConfig) -> dict[str, Any]:
  """The config.json dict of `cfg`'s family; raises ValueError if that family cannot express `cfg`."""
  if cfg.topology != "plain":
    raise ValueError(
      f"HF export needs config.model.topology='plain', not {cfg.topology!r} (its "
      "cross-layer parameters have no HF counterpart)."
    )
  family = family_for(cfg)
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.mlp_activation]
  if family == "gpt2":
    hf = {
      "n_embd": cfg.d_model,
      "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads,
      "n_inner": cfg.ffn_dim,
      "n_positions": cfg.max_positions,
      "layer_norm_epsilon": cfg.rms_eps,
      "activation_function": {"gelu_tanh": "gelu_new"}.get(cfg.mlp_activation, act),
      "scale_attn_weights": cfg.attn_scale_dim != 1.0,
    }
  else:
    hf = {
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.ffn_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "rms_norm_eps": cfg.rms_eps,
      "rope_parameters": _rope_dict(cfg),
      "max_position_embeddings": max(cfg.rope_original_max_positions, 4096),
      "hidden_act": act,
    }
    if family in ("llama", "qwen3", "gemma", "gemma2", "gemma3_text"):
      hf["attention_bias"] = cfg.qkv_bias
    if family == "llama":
      hf["mlp_bias"] = cfg.mlp_bias
    if family == "mistral":
      hf["sliding_window"] = cfg.sliding_window or None
    if family in ("qwen2", "qwen3"):
      hf.update(use_sliding_window=False, sliding_window=None)
      if cfg.sliding_window:
        hf.update(use_sliding_window=True, sliding_window=cfg.sliding_window, layer_types=_layer_types(cfg))
    if family == "gemma3_text":
      local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
      hf["rope_parameters"] = {"full_attention": hf["rope_parameters"], "sliding_attention": local}
    if family in ("gemma2", "gemma3_text"):
      hf.update(
        hidden_activation=hf.pop("hidden_act"),
        layer_types=_layer_types(cfg),
        sliding_window=cfg.sliding_window or 4096,
        query_pre_attn_scalar=_int_if_whole(cfg.attn_scale_dim or cfg.head_dim),
        attn_logit_softcapping=cfg.attn_logit_softcap or None,
        final_logit_softcapping=cfg.final_logit_softcap or None,
      )
  hf.update(
    model_type=family,
    architectures=[ARCHITECTURES[family]],
    vocab_size=cfg.vocab_size,
    tie_word_embeddings=cfg.tie_embeddings,
    initializer_range=cfg.init_std,
    dtype=cfg.param_dtype,
  )
  want, got = _relevant(fields_of(cfg)), _relevant(fields_from_hf(hf))
  diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  if diff:
    raise ValueError(
      f"no HF family expresses this ModelConfig: as {family!r} it would change "
      + ", ".join(f"config.model.{k}={want.get(k)!r} -> {got.get(k)!r}" for k in diff)
    )
  return hf
