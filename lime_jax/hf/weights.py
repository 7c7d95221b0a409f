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

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

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


def _to_theirs(x: np.ndarray, kind: str, n_in: int, shape: tuple[int, ...]) -> np.ndarray:
  hf_shape = _hf_shape(kind, n_in, shape)
  return x.reshape(hf_shape[::-1]).T if kind == "linear" else x.reshape(hf_shape)


def _join_c_attn(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GPT-2: attn.{q,k,v}.* -> `attn.c_attn.{weight,bias}` (q | k | v along the output axis)."""
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
  Topology parameters (params['router']) are not made here (lime_jax/hf/folder.py adds them). The same
  per-tensor conversion (`read_leaf`) builds the sharded parameters of lime_jax/hf/sharded.py.
  """
  source = aliased(MappingSource(state_dict), cfg)
  plan = recipes(cfg)
  check_source(source, plan, cfg)
  params: dict[str, Any] = {}
  for recipe in plan:
    full = tuple(slice(0, n) for n in recipe.shape)
    _assign(params, ".".join(recipe.path), jnp.asarray(read_leaf(source, recipe, full), dtype=cfg.pdtype))
  return params


# ------------------------------------------------------------------------------ per-tensor conversion
class TensorSource(Protocol):
  """HF tensors by key, read a block at a time (`index`: one slice per stored axis) as fp32 numpy. A
  source that caches may also have `release()`, which the loader calls after each parameter leaf."""

  def keys(self) -> Iterable[str]: ...

  def shape(self, key: str) -> tuple[int, ...]: ...

  def read(self, key: str, index: tuple[slice, ...]) -> np.ndarray: ...


class MappingSource:
  """An in-memory state dict (torch tensors, numpy arrays or GGUF `LazyTensor`s) as a TensorSource."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self._sd = state_dict

  def keys(self) -> Iterable[str]:
    return self._sd.keys()

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in self._sd[key].shape)

  def read(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    return _to_numpy(self._sd[key])[index]


class AliasedSource:
  """A source under the key names of our layout: `aliases` maps a name to (stored key, offset along the
  stored tensor's last axis, width) -- GPT-2's `attn.c_attn` read as `attn.{q,k,v}`, keys without the
  `transformer.` prefix. Every other key passes through."""

  def __init__(self, source: TensorSource, aliases: dict[str, tuple[str, int, int | None]]):
    self.source, self._aliases = source, aliases
    hidden = {stored for stored, _, _ in aliases.values()}
    self._keys = [k for k in source.keys() if k not in hidden] + list(aliases)

  def keys(self) -> Iterable[str]:
    return self._keys

  def shape(self, key: str) -> tuple[int, ...]:
    if key not in self._aliases:
      return self.source.shape(key)
    stored, _, width = self._aliases[key]
    shape = self.source.shape(stored)
    return shape if width is None else (*shape[:-1], width)

  def release(self) -> None:
    release = getattr(self.source, "release", None)
    if release is not None:
      release()

  def read(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    if key not in self._aliases:
      return self.source.read(key, index)
    stored, offset, _ = self._aliases[key]
    last = index[-1]
    return self.source.read(stored, (*index[:-1], slice(last.start + offset, last.stop + offset)))


def aliased(source: TensorSource, cfg: ModelConfig) -> TensorSource:
  """`source` under our layout's key names (GPT-2: `transformer.` prefixes, q / k / v of c_attn)."""
  if not _is_gpt2(cfg):
    return source
  keys = list(source.keys())
  aliases: dict[str, tuple[str, int, int | None]] = {}
  if not any(k.startswith("transformer.") for k in keys):
    aliases = {"transformer." + k: (k, 0, None) for k in keys if not k.startswith("lm_head.")}
  width = cfg.num_heads * cfg.head_dim
  for name in [n for n in (list(aliases) or keys) if ".attn.c_attn." in n]:
    stored = aliases.pop(name, (name, 0, None))[0]
    last = source.shape(stored)[-1]
    if last != 3 * width:
      raise ValueError(
        f"HF state dict {stored} has shape {source.shape(stored)}, expected last dim 3 * {width}."
      )
    for i, qkv in enumerate("qkv"):
      aliases[name.replace(".c_attn.", f".{qkv}.")] = (stored, i * width, width)
  return AliasedSource(source, aliases)


@dataclasses.dataclass(frozen=True)
class Part:
  """One HF tensor of a parameter leaf: its key (`{}`: the layer index), how it is stored (`kind`
  'linear' [out, in] / 'conv1d' [in, out] / 'vector', the first `n_in` of our dims being `in`), its
  shape in our orientation (per layer) and its offset along the leaf's last axis (wkv = [wk | wv])."""

  key: str
  kind: str
  n_in: int
  shape: tuple[int, ...]
  offset: int = 0

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return _hf_shape(self.kind, self.n_in, self.shape)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one parameter leaf (at `path`, of `shape`; [L, ...] when `stacked`) is made from HF tensors;
  `tied`: the HF key that must equal this leaf when the embeddings are tied (read slice by slice)."""

  path: tuple[str, ...]
  shape: tuple[int, ...]
  parts: tuple[Part, ...]
  stacked: bool
  tied: Part | None = None


def recipes(cfg: ModelConfig) -> list[Recipe]:
  """The recipe of every backbone leaf of `cfg` (the layout `init_params` makes for 'plain')."""
  L, H = cfg.num_layers, cfg.head_dim
  names = _gpt2_names(cfg) if _is_gpt2(cfg) else _llama_names(cfg)
  pieces = _piece_shapes(cfg)
  prefix = _layer_prefix(cfg)

  def part(piece: str, offset: int = 0) -> Part:
    suffix, kind, n_in = names[piece]
    return Part(prefix + suffix, kind, n_in, pieces[piece], offset)

  out = []
  joined = {"wkv": ("wk", "wv"), "bkv": ("bk", "bv")}
  for piece, shape in pieces.items():
    if piece in ("wk", "wv", "bk", "bv"):
      continue
    out.append(Recipe(("layers", *piece.split(".")), (L, *shape), (part(piece),), True))
  for leaf, (k, v) in joined.items():
    if k in pieces:
      shape = (*pieces[k][:-1], 2 * H)
      out.append(Recipe(("layers", leaf), (L, *shape), (part(k), part(v, H)), True))
  V, D = cfg.vocab_size, cfg.d_model
  shapes = {"embed": (V, D), "pos_embed": (cfg.max_positions, D)}
  for path, key in _globals(cfg).items():
    shape = shapes.get(path, (D,))
    kind = "vector" if len(shape) == 1 else "conv1d"
    tied = Part("lm_head.weight", "conv1d", 1, shape) if path == "embed" and cfg.tie_embeddings else None
    out.append(
      Recipe(
        tuple(path.split(".")), shape, (Part(key, kind, 1 if kind == "conv1d" else 0, shape),), False, tied
      )
    )
  if not cfg.tie_embeddings:
    out.append(Recipe(("unembed",), (D, V), (Part("lm_head.weight", "linear", 1, (D, V)),), False))
  return out


def expected_keys(plan: list[Recipe], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """HF key -> the shape it must have, for every tensor the recipes read (the tied lm_head excluded)."""
  keys = {}
  for recipe in plan:
    for p in recipe.parts:
      layers = range(cfg.num_layers) if recipe.stacked else (None,)
      for layer in layers:
        keys[p.key.format(layer)] = p.hf_shape
  return keys


def check_source(source: TensorSource, plan: list[Recipe], cfg: ModelConfig) -> None:
  """Raises ValueError, before any tensor is read, for a key the recipes need and `source` lacks, a
  shape that differs, or a tensor of `source` lime_jax does not model with this config."""
  have = {k for k in source.keys() if not k.endswith(_IGNORED_SUFFIXES)}
  want = expected_keys(plan, cfg)
  for key, shape in want.items():
    if key not in have:
      raise ValueError(f"HF state dict lacks {key!r} (expected shape {shape}).")
    if tuple(source.shape(key)) != tuple(shape):
      raise ValueError(
        f"{key} has shape {tuple(source.shape(key))}, expected {tuple(shape)} for this ModelConfig."
      )
  optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
  for key in optional & have:
    V, D = cfg.vocab_size, cfg.d_model
    if tuple(source.shape(key)) != (V, D):
      raise ValueError(f"{key} has shape {tuple(source.shape(key))}, expected {(V, D)} for this ModelConfig.")
  unexpected = sorted(have - set(want) - optional)
  if unexpected:
    raise ValueError(
      f"HF state dict has weights lime_jax does not model with this config: {unexpected[:8]}"
      f"{' ...' if len(unexpected) > 8 else ''}"
    )


def read_leaf(source: TensorSource, recipe: Recipe, index: tuple[slice, ...]) -> np.ndarray:
  """The block `index` (one slice per dim of `recipe.shape`) of the leaf, fp32, reading from each HF
  tensor only the rows / columns that block needs (every layer of a stacked leaf's slice)."""
  index = _normalise(index, recipe.shape)
  if not recipe.stacked:
    return read_layer(source, recipe, None, index)
  return np.stack([read_layer(source, recipe, l, index[1:]) for l in range(index[0].start, index[0].stop)])


def read_layer(
  source: TensorSource, recipe: Recipe, layer: int | None, index: tuple[slice, ...]
) -> np.ndarray:
  """Layer `layer`'s block `index` (per-layer dims) of a stacked leaf (None: an unstacked leaf)."""
  index = _normalise(index, recipe.shape[1:] if recipe.stacked else recipe.shape)
  blocks = []
  last = index[-1]
  for p in recipe.parts:
    lo, hi = max(last.start, p.offset), min(last.stop, p.offset + p.shape[-1])
    if lo < hi:
      local = (*index[:-1], slice(lo - p.offset, hi - p.offset))
      blocks.append(_read_part(source, p, p.key.format(layer), local))
  x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
  if recipe.tied is not None:
    t = recipe.tied
    if t.key in source.keys() and not np.array_equal(_read_part(source, t, t.key, index), x):
      raise ValueError(
        "cfg.tie_embeddings=True but the HF lm_head.weight differs from the embedding; "
        "convert with tie_embeddings=False (config.json tie_word_embeddings=false)."
      )
  return x


def _normalise(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
  if len(index) != len(shape):
    index = (*index, *(slice(None),) * (len(shape) - len(index)))
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"strided index {s} is not read.")
    out.append(slice(start, max(start, stop)))
  return tuple(out)


def _flat_indices(index: tuple[slice, ...], dims: tuple[int, ...]) -> np.ndarray:
  """The C-order flat indices of the block `index` of an array of shape `dims` (sorted)."""
  flat = np.zeros((), np.int64)
  stride = 1
  for s, n in zip(reversed(index), reversed(dims)):
    flat = np.add.outer(np.arange(s.start, s.stop) * stride, flat)
    stride *= n
  return flat.reshape(-1)


def _read_part(source: TensorSource, p: Part, key: str, index: tuple[slice, ...]) -> np.ndarray:
  """Our block `index` of one HF tensor: the stored block spanning it, then the rows / columns it needs,
  transposed (linear) and reshaped into our dims."""
  out_shape = tuple(s.stop - s.start for s in index)
  if not all(out_shape):
    return np.zeros(out_shape, np.float32)
  n_in = len(p.shape) if p.kind == "vector" else p.n_in
  a = _flat_indices(index[:n_in], p.shape[:n_in])
  b = _flat_indices(index[n_in:], p.shape[n_in:])
  ra, rb = slice(int(a[0]), int(a[-1]) + 1), slice(int(b[0]), int(b[-1]) + 1)
  stored = (ra,) if p.kind == "vector" else ((rb, ra) if p.kind == "linear" else (ra, rb))
  x = np.asarray(source.read(key, stored), np.float32)
  if p.kind == "linear":
    x = x.T  # [in, out]
  # Rows / columns inside the stored block that the index skips (a sliced inner dim): pick them.
  picks = [a - ra.start] if p.kind == "vector" else [a - ra.start, b - rb.start]
  for axis, pick in enumerate(picks):
    if pick.size != x.shape[axis]:
      x = np.take(x, pick, axis=axis)
  return x.reshape(out_shape)


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
