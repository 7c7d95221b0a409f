"""GGUF checkpoints (llama.cpp's format) read into lime_jax, with the `gguf` library and no torch.

A GGUF file holds the architecture as metadata (`general.architecture`, `<arch>.block_count`,
`<arch>.attention.*`, `<arch>.rope.*`, ...), the tokenizer as metadata (`tokenizer.ggml.*`,
lime_jax/gguf/tokenizer.py) and the tensors under llama.cpp's names, many of them quantised. This
module turns the metadata into the `config.json` dict of the equivalent Hugging Face model
(`hf_config`) and the tensors into that model's state dict (`state_dict`), so that the one HF path of
lime_jax/hf/ (families.py, weights.py) builds the backbone from them.

What llama.cpp's converter changed and this module undoes:
- Llama-architecture q / k projection rows are permuted from the 'rotate half' RoPE layout into the
  interleaved one (`unpermute_rows`);
- Gemma norm weights are stored as 1 + w (`GEMMA_ARCHS`), HF stores w;
- Gemma 3's sliding-window pattern (every 6th layer global) and local RoPE base (1e4) are not in the
  metadata of files written before llama.cpp stored them: llama.cpp assumes them, and so does this
  module (`gemma3.attention.sliding_window_pattern` is read when present).

Tensors are dequantised one at a time, when the conversion asks for them (`LazyTensor`), with
`gguf.quants.dequantize`; the file itself is memory-mapped. Types read: `READABLE_TYPES`; any other is
refused naming it and the tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

GGUF_SUFFIX = ".gguf"
# Quantisation types read (gguf.GGMLQuantizationType names).
READABLE_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
# general.architecture -> HF model_type.
MODEL_TYPES = {
  "llama": "llama",
  "qwen2": "qwen2",
  "qwen3": "qwen3",
  "gemma": "gemma",
  "gemma2": "gemma2",
  "gemma3": "gemma3_text",
}
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
# Architectures whose converter permuted the q / k rows (llama.cpp's LLaMA RoPE is interleaved).
PERMUTED_ARCHS = ("llama",)
# llama.cpp's per-layer tensor names -> HF's (`model.layers.{i}.` + this).
_LAYER_NAMES = {
  "attn_norm": "input_layernorm",
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "attn_q_norm": "self_attn.q_norm",
  "attn_k_norm": "self_attn.k_norm",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
  "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Gemma 3 defaults llama.cpp assumes when the file does not state them.
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0


def gguf_file(path: str) -> str | None:
  """The GGUF file `path` names: itself when it ends in .gguf, the one .gguf in a folder without a
  config.json; None when `path` is not a GGUF checkpoint. Raises when a folder holds several."""
  path = os.path.expanduser(str(path))
  if os.path.isfile(path):
    return path if path.endswith(GGUF_SUFFIX) else None
  if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
    return None
  found = sorted(n for n in os.listdir(path) if n.endswith(GGUF_SUFFIX))
  if len(found) > 1:
    raise ValueError(f"{path!r} holds several GGUF files ({', '.join(found)}): pass the one to read.")
  return os.path.join(path, found[0]) if found else None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One tensor of the file: its llama.cpp name, type name, numpy shape (slowest axis first) and its
  stored bytes (a view of the memory-mapped file)."""

  name: str
  kind: str
  shape: tuple[int, ...]
  data: Any

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
  """A GGUF file's metadata (numbers and strings; arrays as lists, large numeric ones as numpy) and its
  tensors by name. The `gguf` reader that parsed it is not kept: it holds one numpy object per array
  element (~0.7 GB for a 262k-token vocabulary)."""

  path: str
  metadata: dict[str, Any]
  tensors: dict[str, TensorInfo]

  @classmethod
  def open(cls, path: str) -> GGUFCheckpoint:
    """The checkpoint at `path` (a .gguf file or a folder holding one); parsed once per file version
    (the reader parses every metadata array, ~10 s for a 262k-token vocabulary)."""
    file = gguf_file(path)
    if file is None:
      raise FileNotFoundError(f"{path!r} is not a .gguf file (nor a folder holding one).")
    stat = os.stat(file)
    return _open_cached(os.path.abspath(file), stat.st_mtime_ns, stat.st_size)

  @property
  def architecture(self) -> str:
    return str(self.get("general.architecture"))

  def get(self, key: str, default: Any = None) -> Any:
    """The metadata value of `key` (a number, string, or list / numpy array), `default` when absent."""
    value = self.metadata.get(key)
    return default if value is None else value

  def array(self, key: str) -> np.ndarray | None:
    """A numeric metadata array as numpy (e.g. the token scores)."""
    value = self.metadata.get(key)
    return None if value is None else np.asarray(value)

  def strings(self, key: str) -> list[str] | None:
    """A string-array metadata value (e.g. the token list)."""
    value = self.metadata.get(key)
    return None if value is None else list(value)


@functools.lru_cache(maxsize=2)
def _open_cached(file: str, mtime_ns: int, size: int) -> GGUFCheckpoint:
  del mtime_ns, size  # cache keys only: a rewritten file is parsed again
  import gguf  # pylint: disable=import-outside-toplevel

  try:
    reader = gguf.GGUFReader(file, "r")
  except (ValueError, OSError) as e:
    raise ValueError(f"cannot read {file!r} as GGUF ({type(e).__name__}: {e}).") from e
  metadata = {name: _field_value(field) for name, field in reader.fields.items()}
  tensors = {
    t.name: TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), t.data)
    for t in reader.tensors
  }
  return GGUFCheckpoint(file, metadata, tensors)


def _field_value(field: Any) -> Any:
  """A reader field's value; numeric arrays as one numpy array (copied out of the reader's parts)."""
  import gguf  # pylint: disable=import-outside-toplevel

  types = field.types
  if types and types[0] == gguf.GGUFValueType.ARRAY and types[-1] != gguf.GGUFValueType.STRING:
    parts = [field.parts[i] for i in field.data]
    return np.concatenate(parts).copy() if parts else np.zeros(0)
  return field.contents()


def _arch_key(ckpt: GGUFCheckpoint, key: str, default: Any = None, required: bool = False) -> Any:
  arch = ckpt.architecture
  value = ckpt.get(f"{arch}.{key}", default)
  if required and value is None:
    raise ValueError(f"{ckpt.path}: the GGUF metadata lacks {arch}.{key}, which a {arch!r} model needs.")
  return value


def hf_config(ckpt: GGUFCheckpoint) -> dict[str, Any]:
  """The config.json dict of the Hugging Face model equivalent to the GGUF file's metadata.

  Refuses, naming the metadata key, what lime_jax's families cannot express (other architectures,
  RoPE scaling types) so that families.fields_from_hf sees only what the file states."""
  arch = ckpt.architecture
  if arch not in MODEL_TYPES:
    raise ValueError(
      f"{ckpt.path}: general.architecture={arch!r} is not read; lime_jax reads the GGUF "
      f"architectures {', '.join(MODEL_TYPES)}."
    )
  tensors = ckpt.tensors
  D = int(_arch_key(ckpt, "embedding_length", required=True))
  N = int(_arch_key(ckpt, "attention.head_count", required=True))
  L = int(_arch_key(ckpt, "block_count", required=True))
  head_dim = int(_arch_key(ckpt, "attention.key_length", 0) or D // N)
  value_dim = int(_arch_key(ckpt, "attention.value_length", 0) or head_dim)
  if value_dim != head_dim:
    raise ValueError(f"{ckpt.path}: {arch}.attention.value_length={value_dim} != key_length={head_dim}.")
  rope_dim = _arch_key(ckpt, "rope.dimension_count")
  if rope_dim is not None and int(rope_dim) != head_dim:
    raise ValueError(
      f"{ckpt.path}: {arch}.rope.dimension_count={rope_dim} rotates part of the head (head_dim "
      f"{head_dim}); lime_jax rotates every channel."
    )
  scaling = _arch_key(ckpt, "rope.scaling.type")
  if scaling not in (None, "none"):
    raise ValueError(
      f"{ckpt.path}: {arch}.rope.scaling.type={scaling!r}: RoPE scaling is not read from GGUF."
    )
  if "rope_freqs.weight" in tensors:
    raise ValueError(
      f"{ckpt.path}: the tensor rope_freqs.weight (llama3-style RoPE frequency factors) is not read "
      "from GGUF; convert the model from its Hugging Face folder instead."
    )
  vocab = _arch_key(ckpt, "vocab_size") or int(tensors["token_embd.weight"].shape[0])
  hf: dict[str, Any] = {
    "model_type": MODEL_TYPES[arch],
    "vocab_size": int(vocab),
    "hidden_size": D,
    "intermediate_size": int(_arch_key(ckpt, "feed_forward_length", required=True)),
    "num_hidden_layers": L,
    "num_attention_heads": N,
    "num_key_value_heads": int(_arch_key(ckpt, "attention.head_count_kv", N)),
    "head_dim": head_dim,
    "rms_norm_eps": _f32_decimal(_arch_key(ckpt, "attention.layer_norm_rms_epsilon", 1e-6)),
    "rope_theta": _f32_decimal(_arch_key(ckpt, "rope.freq_base", 10_000.0)),
    "max_position_embeddings": int(_arch_key(ckpt, "context_length", 4096)),
    "tie_word_embeddings": "output.weight" not in tensors,
  }
  if arch in ("llama", "qwen2", "qwen3"):
    hf["hidden_act"] = "silu"
  if arch in ("llama", "qwen3"):
    hf["attention_bias"] = "blk.0.attn_q.bias" in tensors
  if arch in GEMMA_ARCHS:
    hf["hidden_activation"] = "gelu_pytorch_tanh"
    hf["hidden_act"] = "gelu_pytorch_tanh"
  if arch in ("gemma2", "gemma3"):
    window = int(_arch_key(ckpt, "attention.sliding_window", required=True))
    # llama.cpp scales queries by key_length**-0.5, except for the 27B models, whose HF configs say
    # query_pre_attn_scalar = hidden_size / num_heads (Gemma 2 27B: 46 layers, Gemma 3 27B: 62).
    big = (arch == "gemma2" and L == 46) or (arch == "gemma3" and L == 62)
    hf.update(sliding_window=window, query_pre_attn_scalar=D // N if big else head_dim)
  if arch == "gemma2":
    hf.update(
      layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)],
      attn_logit_softcapping=_arch_key(ckpt, "attn_logit_softcapping"),
      final_logit_softcapping=_arch_key(ckpt, "final_logit_softcapping"),
    )
  if arch == "gemma3":
    hf.update(
      layer_types=_gemma3_layer_types(ckpt, L),
      rope_local_base_freq=GEMMA3_LOCAL_ROPE_BASE,
      attn_logit_softcapping=None,
      final_logit_softcapping=_arch_key(ckpt, "final_logit_softcapping"),
    )
  return hf


def _f32_decimal(x: float) -> float:
  """The shortest decimal of a float32 metadata value (1e-5, not 9.999999747378752e-06), as the HF
  config it was converted from states it."""
  return float(str(np.float32(x)))


def _gemma3_layer_types(ckpt: GGUFCheckpoint, L: int) -> list[str]:
  pattern = _arch_key(ckpt, "attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN)
  if isinstance(pattern, list):  # one flag per layer: True = sliding
    if len(pattern) != L:
      raise ValueError(
        f"{ckpt.path}: gemma3.attention.sliding_window_pattern has {len(pattern)} entries, not {L}."
      )
    return ["sliding_attention" if p else "full_attention" for p in pattern]
  pattern = int(pattern)
  return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(L)]


def unpermute_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q / k row permutation: per head, its converter reorders the rows of the
  'rotate half' layout (first half, second half) into interleaved pairs (0, H/2, 1, H/2 + 1, ...)."""
  rows = w.shape[0]
  half = rows // num_heads // 2
  return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name: str, arch: str) -> str | None:
  """The HF state-dict key of llama.cpp tensor `name`; None when it has none."""
  stem, _, kind = name.rpartition(".")
  if kind not in ("weight", "bias"):
    return None
  if stem in _GLOBAL_NAMES:
    return f"{_GLOBAL_NAMES[stem]}.{kind}"
  parts = stem.split(".")
  if len(parts) != 3 or parts[0] != "blk" or not parts[1].isdigit():
    return None
  layer, piece = int(parts[1]), parts[2]
  post_norms = arch in ("gemma2", "gemma3")
  names = dict(_LAYER_NAMES)
  # llama.cpp's ffn_norm is the norm before the MLP: HF post_attention_layernorm, or with Gemma 2/3's
  # four norms pre_feedforward_layernorm (their post_attention_layernorm is llama.cpp's
  # post_attention_norm).
  names["ffn_norm"] = "pre_feedforward_layernorm" if post_norms else "post_attention_layernorm"
  if post_norms:
    names["post_attention_norm"] = "post_attention_layernorm"
  if piece not in names:
    return None
  return f"model.layers.{layer}.{names[piece]}.{kind}"


class LazyTensor:
  """A GGUF tensor that is dequantised (and un-permuted, Gemma norms shifted) when numpy asks for it,
  so a conversion holds one fp32 tensor at a time beyond what it has built. Rows are dequantised in
  chunks into the output, bounding the dequantiser's temporaries; `numpy(rows)` dequantises only a range
  of rows (axis 0) of a 2-D tensor whose fix, if any, acts on each row alone (`row_local`: not the q / k
  un-permutation)."""

  ROWS_PER_CHUNK = 4096

  def __init__(self, tensor: TensorInfo, fix: Any = None, row_local: bool = True):
    self._tensor, self.shape, self._fix = tensor, tensor.shape, fix
    self.row_local = row_local and len(tensor.shape) == 2

  @property
  def stored_bytes(self) -> int:
    """The tensor's bytes in the file (quantised)."""
    return int(self._tensor.data.nbytes)

  def numpy(self, rows: slice | None = None) -> np.ndarray:
    """The fp32 tensor, or (`rows`, a row-local 2-D tensor only) its rows `rows`."""
    import gguf  # pylint: disable=import-outside-toplevel

    t = self._tensor
    if t.kind not in READABLE_TYPES:
      raise ValueError(
        f"GGUF tensor {t.name!r} has type {t.kind}, which lime_jax does not read "
        f"({', '.join(READABLE_TYPES)})."
      )
    kind = gguf.GGMLQuantizationType[t.kind]
    raw = t.data.reshape(-1, t.data.shape[-1])
    shape = self.shape
    if rows is not None:
      if not self.row_local:
        raise ValueError(f"GGUF tensor {t.name!r} is read whole (its fix mixes rows), not by rows.")
      raw = raw[rows]
      shape = (raw.shape[0], *self.shape[1:])
    out = np.empty((raw.shape[0], t.shape[-1]), np.float32)
    for start in range(0, raw.shape[0], self.ROWS_PER_CHUNK):
      chunk = raw[start : start + self.ROWS_PER_CHUNK]
      out[start : start + len(chunk)] = gguf.quants.dequantize(chunk, kind).reshape(len(chunk), -1)
    out = out.reshape(shape)
    return self._fix(out) if self._fix is not None else out

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    x = self.numpy()
    return x if dtype is None else x.astype(dtype, copy=False)


class LazyStateDict(Mapping):
  """HF key -> LazyTensor of a GGUF file (the mapping lime_jax/hf/weights.py converts)."""

  def __init__(self, items: dict[str, LazyTensor]):
    self._items = items

  def __getitem__(self, key: str) -> LazyTensor:
    return self._items[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)


def state_dict(ckpt: GGUFCheckpoint, hf: dict[str, Any] | None = None) -> LazyStateDict:
  """The HF state dict of the GGUF file's tensors, each dequantised when read. Raises naming any tensor
  the HF layout has no name for, and any tensor of a type lime_jax does not read."""
  hf = hf or hf_config(ckpt)
  arch = ckpt.architecture
  N, R = hf["num_attention_heads"], hf["num_key_value_heads"]
  items: dict[str, LazyTensor] = {}
  for name, tensor in ckpt.tensors.items():
    key = hf_name(name, arch)
    if key is None:
      raise ValueError(f"{ckpt.path}: tensor {name!r} has no counterpart in lime_jax's {arch!r} layout.")
    if tensor.kind not in READABLE_TYPES:
      raise ValueError(
        f"{ckpt.path}: tensor {name!r} has type {tensor.kind}, which lime_jax does not read "
        f"({', '.join(READABLE_TYPES)}); re-quantise the file with one of those."
      )
    fix, row_local = None, True
    if arch in PERMUTED_ARCHS and name.endswith(("attn_q.weight", "attn_q.bias")):
      fix, row_local = (lambda x, n=N: unpermute_rows(x, n)), False
    elif arch in PERMUTED_ARCHS and name.endswith(("attn_k.weight", "attn_k.bias")):
      fix, row_local = (lambda x, n=R: unpermute_rows(x, n)), False
    elif arch in GEMMA_ARCHS and name.endswith("norm.weight"):
      fix = lambda x: x - np.float32(1.0)
    items[key] = LazyTensor(tensor, fix, row_local)
  return LazyStateDict(items)


def describe(ckpt: GGUFCheckpoint) -> dict[str, Any]:
  """What the file holds: architecture, name, quantisation types with their tensor counts, parameters."""
  tensors = list(ckpt.tensors.values())
  return {
    "file": ckpt.path,
    "architecture": ckpt.architecture,
    "name": ckpt.get("general.name"),
    "file_bytes": os.path.getsize(ckpt.path),
    "tensor_types": dict(collections.Counter(t.kind for t in tensors).most_common()),
    "parameters": int(sum(t.size for t in tensors)),
  }
