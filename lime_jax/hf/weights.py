"""Hugging Face state dicts <-> lime_jax parameters, for the LLaMA layout and GPT-2's.

Two stages. (1) Each HF layout maps its tensors to per-layer *pieces* in lime_jax orientation (wq [D, N, H],
wk / wv [D, R, H], bq [N, H], bk / bv [R, H], wo [N, H, D], bo [D], q_norm / k_norm [H], the norms'
scale / bias [D], mlp w_gate / w_up [D, F], w_down [F, D] and biases); (2) the pieces become the Block's
parameters (wkv = [wk | wv] per kv head, bkv likewise), stacked over layers [L, ...].

LLaMA layout (llama, mistral, qwen2/3, gemma, gemma2; per layer `model.layers.{i}.`): nn.Linear weights
[out, in]; `self_attn.{q,k,v,o}_proj.{weight,bias}`, `self_attn.{q,k}_norm.weight`, `mlp.{gate,up,down}_proj`,
norms `input_layernorm` (attn_norm) and `post_attention_layernorm` (mlp_norm); with post_norms (Gemma 2)
`post_attention_layernorm` is attn_post_norm, `pre_feedforward_layernorm` mlp_norm and
`post_feedforward_layernorm` mlp_post_norm. Globals: `model.embed_tokens`, `model.norm`, `lm_head`.

GPT-2 layout (learned positions; per layer `transformer.h.{i}.`): Conv1D weights [in, out]; `attn.c_attn`
holds q | k | v along out, `attn.c_proj`, `mlp.c_fc` (w_up), `mlp.c_proj` (w_down), `ln_1`, `ln_2`; globals
`transformer.wte`, `transformer.wpe` (pos_embed), `transformer.ln_f`. Keys without the `transformer.`
prefix (GPT2Model checkpoints) are read too.

Both use RoPE in the 'rotate half' layout, so q/k channels need no permutation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.model.model_config import ModelConfig

# HF keys that carry no parameters of ours (buffers some versions store).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def _piece_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """The per-layer pieces `cfg` has, with their lime_jax shapes."""
  D, N, R, H, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim
  shapes = {
    "wq": (D, N, H),
    "wk": (D, R, H),
    "wv": (D, R, H),
    "wo": (N, H, D),
    "attn_norm.scale": (D,),
    "mlp_norm.scale": (D,),
    "mlp.w_up": (D, F),
    "mlp.w_down": (F, D),
  }
  if cfg.mlp_gated:
    shapes["mlp.w_gate"] = (D, F)
  if cfg.qkv_bias:
    shapes.update(bq=(N, H), bk=(R, H), bv=(R, H))
  if cfg.out_bias:
    shapes["bo"] = (D,)
  if cfg.mlp_bias:
    shapes.update({"mlp.b_up": (F,), "mlp.b_down": (D,)})
    if cfg.mlp_gated:
      shapes["mlp.b_gate"] = (F,)
  if cfg.qk_norm:
    shapes.update(q_norm=(H,), k_norm=(H,))
  norms = ["attn_norm", "mlp_norm"] + (["attn_post_norm", "mlp_post_norm"] if cfg.post_norms else [])
  for norm in norms:
    shapes[f"{norm}.scale"] = (D,)
    if cfg.norm_type == "layer":
      shapes[f"{norm}.bias"] = (D,)
  return shapes


def _is_gpt2(cfg: ModelConfig) -> bool:
  return cfg.position == "learned"


# Per layout: piece -> (HF key suffix, how it is stored): 'linear' [out, in] (in = the first `n_in`
# dims of the piece), 'conv1d' [in, out], 'vector' (flattened).
def _llama_names(cfg: ModelConfig) -> dict[str, tuple[str, str, int]]:
  names = {
    "wq": ("self_attn.q_proj.weight", "linear", 1),
    "wk": ("self_attn.k_proj.weight", "linear", 1),
    "wv": ("self_attn.v_proj.weight", "linear", 1),
    "wo": ("self_attn.o_proj.weight", "linear", 2),
    "bq": ("self_attn.q_proj.bias", "vector", 0),
    "bk": ("self_attn.k_proj.bias", "vector", 0),
    "bv": ("self_attn.v_proj.bias", "vector", 0),
    "bo": ("self_attn.o_proj.bias", "vector", 0),
    "q_norm": ("self_attn.q_norm.weight", "vector", 0),
    "k_norm": ("self_attn.k_norm.weight", "vector", 0),
  }
  for proj in ("gate", "up", "down"):
    names[f"mlp.w_{proj}"] = (f"mlp.{proj}_proj.weight", "linear", 1)
    names[f"mlp.b_{proj}"] = (f"mlp.{proj}_proj.bias", "vector", 0)
  norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
  if cfg.post_norms:
    norms = {
      "attn_norm": "input_layernorm",
      "attn_post_norm": "post_attention_layernorm",
      "mlp_norm": "pre_feedforward_layernorm",
      "mlp_post_norm": "post_feedforward_layernorm",
    }
  for ours, theirs in norms.items():
    names[f"{ours}.scale"] = (f"{theirs}.weight", "vector", 0)
    names[f"{ours}.bias"] = (f"{theirs}.bias", "vector", 0)
  return names


def _gpt2_names(cfg: ModelConfig) -> dict[str, tuple[str, str, int]]:
  del cfg
  names = {
    "wq": ("attn.q.weight", "conv1d", 1),
    "wk": ("attn.k.weight", "conv1d", 1),
    "wv": ("attn.v.weight", "conv1d", 1),
    "bq": ("attn.q.bias", "vector", 0),
    "bk": ("attn.k.bias", "vector", 0),
    "bv": ("attn.v.bias", "vector", 0),
    "wo": ("attn.c_proj.weight", "conv1d", 2),
    "bo": ("attn.c_proj.bias", "vector", 0),
    "mlp.w_up": ("mlp.c_fc.weight", "conv1d", 1),
    "mlp.b_up": ("mlp.c_fc.bias", "vector", 0),
    "mlp.w_down": ("mlp.c_proj.weight", "conv1d", 1),
    "mlp.b_down": ("mlp.c_proj.bias", "vector", 0),
  }
  for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
    names[f"{ours}.scale"] = (f"{theirs}.weight", "vector", 0)
    names[f"{ours}.bias"] = (f"{theirs}.bias", "vector", 0)
  return names


def _globals(cfg: ModelConfig) -> dict[str, str]:
  """Top-level parameter path -> HF key."""
  if _is_gpt2(cfg):
    names = {
      "embed": "transformer.wte.weight",
      "pos_embed": "transformer.wpe.weight",
      "final_norm.scale": "transformer.ln_f.weight",
      "final_norm.bias": "transformer.ln_f.bias",
    }
  else:
    names = {"embed": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight"}
    if cfg.norm_type == "layer":
      names["final_norm.bias"] = "model.norm.bias"
  return names


def _layer_prefix(cfg: ModelConfig) -> str:
  return "transformer.h.{}." if _is_gpt2(cfg) else "model.layers.{}."


def _hf_shape(kind: str, n_in: int, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "vector":
    return (math.prod(shape),)
  d_in, d_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
  return (d_out, d_in) if kind == "linear" else (d_in, d_out)


def _to_ours(x: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  return (x.T if kind == "linear" else x).reshape(shape)


def _to_theirs(x: np.ndarray, kind: str, n_in: int, shape: tuple[int, ...]) -> np.ndarray:
  hf_shape = _hf_shape(kind, n_in, shape)
  return x.reshape(hf_shape[::-1]).T if kind == "linear" else x.reshape(hf_shape)


def _split_c_attn(sd: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
  """GPT-2: `attn.c_attn.{weight,bias}` (q | k | v along the output axis) -> attn.{q,k,v}.*."""
  out = {}
  for key, x in sd.items():
    if ".attn.c_attn." not in key:
      out[key] = x
      continue
    x = _to_numpy(x)
    width = cfg.num_heads * cfg.head_dim
    if x.shape[-1] != 3 * width:
      raise ValueError(f"HF state dict {key} has shape {tuple(x.shape)}, expected last dim 3 * {width}.")
    for i, name in enumerate("qkv"):
      out[key.replace(".c_attn.", f".{name}.")] = x[..., i * width : (i + 1) * width]
  return out


def _join_c_attn(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `_split_c_attn`."""
  out = {}
  for key, x in sd.items():
    if ".attn.q." in key:
      parts = [sd[key.replace(".attn.q.", f".attn.{name}.")] for name in "qkv"]
      out[key.replace(".attn.q.", ".attn.c_attn.")] = np.concatenate(parts, axis=-1)
    elif ".attn.k." not in key and ".attn.v." not in key:
      out[key] = x
  return out


def params_to_hf_state_dict(
  params: Mapping[str, Any], cfg: ModelConfig, as_torch: bool = False
) -> dict[str, Any]:
  """Our parameters -> the HF state dict of `cfg`'s layout (fp32 numpy arrays, or torch tensors).

  `lm_head.weight` is always included (equal to the embedding when tied) so that
  `load_state_dict(..., strict=True)` accepts it.
  """
  if cfg.topology != "plain":
    raise ValueError(f"HF conversion needs config.model.topology='plain', not {cfg.topology!r}.")
  f32 = lambda x: np.asarray(jax.device_get(x), dtype=np.float32)
  L, H = cfg.num_layers, cfg.head_dim
  names = _gpt2_names(cfg) if _is_gpt2(cfg) else _llama_names(cfg)
  layers = _pieces_from_layers(params["layers"], cfg)
  sd: dict[str, np.ndarray] = {}
  for piece, shape in _piece_shapes(cfg).items():
    suffix, kind, n_in = names[piece]
    stacked = f32(layers[piece])
    _expect_shape(f"layers.{piece}", stacked, (L, *shape))
    for i in range(L):
      sd[_layer_prefix(cfg).format(i) + suffix] = _to_theirs(stacked[i], kind, n_in, shape)
  del H
  for path, key in _globals(cfg).items():
    sd[key] = f32(_lookup(params, path))
  embed_VD = sd[_globals(cfg)["embed"]]
  _expect_shape("embed", embed_VD, (cfg.vocab_size, cfg.d_model))
  if cfg.tie_embeddings:
    sd["lm_head.weight"] = embed_VD
  else:
    unembed_DV = f32(params["unembed"])
    _expect_shape("unembed", unembed_DV, (cfg.d_model, cfg.vocab_size))
    sd["lm_head.weight"] = unembed_DV.T
  if _is_gpt2(cfg):
    sd = _join_c_attn(sd)
  sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
  if as_torch:
    import torch  # pylint: disable=g-import-not-at-top

    sd = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
  return sd


def hf_state_dict_to_params(state_dict: Mapping[str, Any], cfg: ModelConfig) -> dict:
  """An HF state dict (torch tensors or arrays) -> our backbone parameters in `cfg.param_dtype`.

  Raises ValueError on missing keys, unexpected keys (e.g. biases `cfg` has not) and shape mismatches,
  and when `cfg.tie_embeddings` but the state dict's `lm_head.weight` differs from the embedding.
  Topology parameters (params['router']) are not made here (lime_jax/hf/folder.py adds them).
  """
  sd = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  if _is_gpt2(cfg):
    if not any(k.startswith("transformer.") for k in sd):
      sd = {(k if k.startswith("lm_head.") else "transformer." + k): v for k, v in sd.items()}
    sd = _split_c_attn(sd, cfg)
  used: set[str] = set()

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in sd:
      raise ValueError(f"HF state dict lacks {key!r} (expected shape {shape}).")
    used.add(key)
    x = _to_numpy(sd[key])
    _expect_shape(key, x, shape)
    return x

  names = _gpt2_names(cfg) if _is_gpt2(cfg) else _llama_names(cfg)
  pieces: dict[str, np.ndarray] = {}
  for piece, shape in _piece_shapes(cfg).items():
    suffix, kind, n_in = names[piece]
    hf_shape = _hf_shape(kind, n_in, shape)
    pieces[piece] = np.stack(
      [
        _to_ours(take(_layer_prefix(cfg).format(i) + suffix, hf_shape), kind, shape)
        for i in range(cfg.num_layers)
      ]
    )
  params: dict[str, Any] = {"layers": _layers_from_pieces(pieces, cfg)}
  for path, key in _globals(cfg).items():
    shape = (
      (cfg.max_positions, cfg.d_model)
      if path == "pos_embed"
      else ((cfg.vocab_size, cfg.d_model) if path == "embed" else (cfg.d_model,))
    )
    _assign(params, path, take(key, shape))
  V, D = cfg.vocab_size, cfg.d_model
  if cfg.tie_embeddings:
    if "lm_head.weight" in sd and not np.array_equal(take("lm_head.weight", (V, D)), params["embed"]):
      raise ValueError(
        "cfg.tie_embeddings=True but the HF lm_head.weight differs from the embedding; "
        "convert with tie_embeddings=False (config.json tie_word_embeddings=false)."
      )
  else:
    params["unembed"] = take("lm_head.weight", (V, D)).T
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(
      f"HF state dict has weights lime_jax does not model with this config: {unexpected[:8]}"
      f"{' ...' if len(unexpected) > 8 else ''}"
    )
  return _to_device_leafwise(params, cfg.pdtype)


def _to_device_leafwise(tree: dict, dtype: Any) -> dict:
  """The numpy tree as jax arrays of `dtype`, converted one leaf at a time, each numpy leaf dropped
  once converted: the host holds the numpy tree plus one leaf, not two whole copies of the model."""
  for key in list(tree):
    if isinstance(tree[key], dict):
      tree[key] = _to_device_leafwise(tree[key], dtype)
    else:
      leaf = tree.pop(key)
      tree[key] = jnp.asarray(leaf, dtype=dtype)
      del leaf
  return tree


def _layers_from_pieces(pieces: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, Any]:
  """Stacked pieces -> the Block's stacked parameters (k and v joined per kv head)."""
  layers: dict[str, Any] = {
    "wq": pieces["wq"],
    "wo": pieces["wo"],
    "wkv": np.concatenate([pieces["wk"], pieces["wv"]], axis=-1),
  }
  if cfg.qkv_bias:
    layers.update(bq=pieces["bq"], bkv=np.concatenate([pieces["bk"], pieces["bv"]], axis=-1))
  for piece, x in pieces.items():
    if piece not in ("wq", "wk", "wv", "wo", "bq", "bk", "bv"):
      _assign(layers, piece, x)
  return layers


def _pieces_from_layers(layers: Mapping[str, Any], cfg: ModelConfig) -> dict[str, Any]:
  """Inverse of `_layers_from_pieces` (arrays are only sliced)."""
  H = cfg.head_dim
  pieces = {}
  for piece in _piece_shapes(cfg):
    if piece in ("wk", "wv"):
      wkv = layers["wkv"]
      pieces[piece] = wkv[..., :H] if piece == "wk" else wkv[..., H:]
    elif piece in ("bk", "bv"):
      bkv = layers["bkv"]
      pieces[piece] = bkv[..., :H] if piece == "bk" else bkv[..., H:]
    else:
      pieces[piece] = _lookup(layers, piece)
  return pieces


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
  for part in path.split("."):
    if part not in tree:
      raise ValueError(f"parameters lack {path!r} (this ModelConfig has it).")
    tree = tree[part]
  return tree


def _assign(tree: dict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def _to_numpy(x: Any) -> np.ndarray:
  """fp32 numpy copy of a torch tensor (any dtype, any device) or array-like."""
  if hasattr(x, "detach"):
    return x.detach().to(device="cpu").float().numpy()
  return np.asarray(x, dtype=np.float32)


def _expect_shape(name: str, x: np.ndarray, shape: tuple[int, ...]) -> None:
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)} for this ModelConfig.")
