"""Conversion between lime_jax parameters and Hugging Face `transformers` `LlamaForCausalLM`.

Only the plain topology maps onto LLaMA (LIMe's router has no HF counterpart). Layouts:

| lime_jax                        | HF (per layer i: `model.layers.{i}.`)                    |
|---------------------------------|----------------------------------------------------------|
| embed [V, D]                    | model.embed_tokens.weight [V, D]                         |
| layers.attn_norm.scale [L, D]   | input_layernorm.weight [D]                               |
| layers.wq [L, D, N, H]          | self_attn.q_proj.weight [N*H, D]                         |
| layers.wkv [L, D, R, 2H]        | self_attn.k_proj.weight, v_proj.weight [R*H, D] each     |
| layers.wo [L, N, H, D]          | self_attn.o_proj.weight [D, N*H]                         |
| layers.mlp_norm.scale [L, D]    | post_attention_layernorm.weight [D]                      |
| layers.mlp.w_gate/w_up [L, D, F]| mlp.gate_proj.weight / up_proj.weight [F, D]             |
| layers.mlp.w_down [L, F, D]     | mlp.down_proj.weight [D, F]                              |
| final_norm.scale [D]            | model.norm.weight [D]                                    |
| unembed [D, V] (untied only)    | lm_head.weight [V, D] (= embed_tokens when tied)         |

Both use RoPE in the 'rotate half' layout, so q/k channels need no permutation. torch and transformers
are imported lazily: this module works without them for the array conversion itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.model_config import ModelConfig

_LAYER = "model.layers.{}."
# HF keys that carry no parameters of ours (buffers some versions store).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def llama_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
  """Keyword arguments for `transformers.LlamaConfig` describing the same network as `cfg`."""
  _check_plain(cfg)
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_eps,
              rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
              mlp_bias=False, hidden_act="silu", initializer_range=cfg.init_std)


def model_config_from_hf(hf_config: Any, **overrides) -> ModelConfig:
  """A ModelConfig equivalent to a `LlamaConfig`; raises ValueError for features we do not model."""
  if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
    raise ValueError("HF config has attention_bias/mlp_bias; lime_jax's backbone has no biases.")
  if getattr(hf_config, "hidden_act", "silu") != "silu":
    raise ValueError(f"HF config hidden_act={hf_config.hidden_act!r}; lime_jax uses SwiGLU (silu).")
  head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
  if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
    raise ValueError(f"HF config head_dim={head_dim} != hidden_size / num_attention_heads; unsupported.")
  rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"HF config rope_type={rope['rope_type']!r}; lime_jax implements plain RoPE only.")
  theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0))
  kwargs = dict(vocab_size=hf_config.vocab_size, num_layers=hf_config.num_hidden_layers,
                d_model=hf_config.hidden_size, num_heads=hf_config.num_attention_heads,
                num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
                ffn_dim=hf_config.intermediate_size, rope_theta=float(theta),
                rms_eps=float(hf_config.rms_norm_eps), init_std=float(hf_config.initializer_range),
                tie_embeddings=bool(hf_config.tie_word_embeddings))
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def params_to_hf_state_dict(params: Mapping[str, Any], cfg: ModelConfig,
                            as_torch: bool = False) -> dict[str, Any]:
  """Our parameters -> a `LlamaForCausalLM` state dict (fp32 numpy arrays, or torch tensors).

  When embeddings are tied, `lm_head.weight` is included (equal to the embedding) so that
  `load_state_dict(..., strict=True)` accepts it.
  """
  _check_plain(cfg)
  L, D, N, R, H, F = cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim
  f32 = lambda x: np.asarray(jax.device_get(x), dtype=np.float32)
  layers = params["layers"]
  wq_LDNH = f32(layers["wq"])
  wkv_LDRC = f32(layers["wkv"])
  wo_LNHD = f32(layers["wo"])
  _expect_shape("layers.wq", wq_LDNH, (L, D, N, H))
  _expect_shape("layers.wkv", wkv_LDRC, (L, D, R, 2 * H))
  _expect_shape("layers.wo", wo_LNHD, (L, N, H, D))
  mlp = layers["mlp"]
  w_gate_LDF, w_up_LDF, w_down_LFD = f32(mlp["w_gate"]), f32(mlp["w_up"]), f32(mlp["w_down"])
  _expect_shape("layers.mlp.w_gate", w_gate_LDF, (L, D, F))
  _expect_shape("layers.mlp.w_up", w_up_LDF, (L, D, F))
  _expect_shape("layers.mlp.w_down", w_down_LFD, (L, F, D))
  attn_norm_LD, mlp_norm_LD = f32(layers["attn_norm"]["scale"]), f32(layers["mlp_norm"]["scale"])

  embed_VD = f32(params["embed"])
  _expect_shape("embed", embed_VD, (cfg.vocab_size, D))
  sd: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed_VD}
  for i in range(L):
    p = _LAYER.format(i)
    sd[p + "self_attn.q_proj.weight"] = wq_LDNH[i].reshape(D, N * H).T
    sd[p + "self_attn.k_proj.weight"] = wkv_LDRC[i, :, :, :H].reshape(D, R * H).T
    sd[p + "self_attn.v_proj.weight"] = wkv_LDRC[i, :, :, H:].reshape(D, R * H).T
    sd[p + "self_attn.o_proj.weight"] = wo_LNHD[i].reshape(N * H, D).T
    sd[p + "mlp.gate_proj.weight"] = w_gate_LDF[i].T
    sd[p + "mlp.up_proj.weight"] = w_up_LDF[i].T
    sd[p + "mlp.down_proj.weight"] = w_down_LFD[i].T
    sd[p + "input_layernorm.weight"] = attn_norm_LD[i]
    sd[p + "post_attention_layernorm.weight"] = mlp_norm_LD[i]
  sd["model.norm.weight"] = f32(params["final_norm"]["scale"])
  if cfg.tie_embeddings:
    sd["lm_head.weight"] = embed_VD
  else:
    unembed_DV = f32(params["unembed"])
    _expect_shape("unembed", unembed_DV, (D, cfg.vocab_size))
    sd["lm_head.weight"] = unembed_DV.T
  sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
  if as_torch:
    import torch  # pylint: disable=g-import-not-at-top
    sd = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
  return sd


def hf_state_dict_to_params(state_dict: Mapping[str, Any], cfg: ModelConfig) -> dict:
  """A `LlamaForCausalLM` state dict (torch tensors or arrays) -> our parameters in `cfg.param_dtype`.

  Raises ValueError on missing keys, unexpected keys (e.g. biases) and shape mismatches, and when
  `cfg.tie_embeddings` but the state dict's `lm_head.weight` differs from the embedding.
  """
  _check_plain(cfg)
  L, D, N, R, H, F = cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim
  V = cfg.vocab_size
  sd = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  used: set[str] = set()

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in sd:
      raise ValueError(f"HF state dict lacks {key!r} (expected shape {shape}).")
    used.add(key)
    x = _to_numpy(sd[key])
    _expect_shape(key, x, shape)
    return x

  wq, wkv, wo, gate, up, down, attn_norm, mlp_norm = ([] for _ in range(8))
  for i in range(L):
    p = _LAYER.format(i)
    wq.append(take(p + "self_attn.q_proj.weight", (N * H, D)).T.reshape(D, N, H))
    k_DRH = take(p + "self_attn.k_proj.weight", (R * H, D)).T.reshape(D, R, H)
    v_DRH = take(p + "self_attn.v_proj.weight", (R * H, D)).T.reshape(D, R, H)
    wkv.append(np.concatenate([k_DRH, v_DRH], axis=-1))
    wo.append(take(p + "self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D))
    gate.append(take(p + "mlp.gate_proj.weight", (F, D)).T)
    up.append(take(p + "mlp.up_proj.weight", (F, D)).T)
    down.append(take(p + "mlp.down_proj.weight", (D, F)).T)
    attn_norm.append(take(p + "input_layernorm.weight", (D,)))
    mlp_norm.append(take(p + "post_attention_layernorm.weight", (D,)))

  embed_VD = take("model.embed_tokens.weight", (V, D))
  params: dict[str, Any] = {
      "embed": embed_VD,
      "layers": {
          "attn_norm": {"scale": np.stack(attn_norm)},
          "wq": np.stack(wq), "wkv": np.stack(wkv), "wo": np.stack(wo),
          "mlp_norm": {"scale": np.stack(mlp_norm)},
          "mlp": {"w_gate": np.stack(gate), "w_up": np.stack(up), "w_down": np.stack(down)},
      },
      "final_norm": {"scale": take("model.norm.weight", (D,))},
  }
  if cfg.tie_embeddings:
    if "lm_head.weight" in sd and not np.array_equal(take("lm_head.weight", (V, D)), embed_VD):
      raise ValueError("cfg.tie_embeddings=True but the HF lm_head.weight differs from embed_tokens; "
                       "convert with tie_embeddings=False.")
  else:
    params["unembed"] = take("lm_head.weight", (V, D)).T
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(f"HF state dict has weights lime_jax does not model: {unexpected[:8]}"
                     f"{' ...' if len(unexpected) > 8 else ''}")
  return jax.tree.map(lambda x: jnp.asarray(x, dtype=cfg.pdtype), params)


def _to_numpy(x: Any) -> np.ndarray:
  """fp32 numpy copy of a torch tensor (any dtype, any device) or array-like."""
  if hasattr(x, "detach"):
    return x.detach().to(device="cpu").float().numpy()
  return np.asarray(x, dtype=np.float32)


def _expect_shape(name: str, x: np.ndarray, shape: tuple[int, ...]) -> None:
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)} for this ModelConfig.")


def _check_plain(cfg: ModelConfig) -> None:
  if cfg.topology != "plain":
    raise ValueError(f"HF LLaMA conversion needs config.model.topology='plain', not {cfg.topology!r}.")
