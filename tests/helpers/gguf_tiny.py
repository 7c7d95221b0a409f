"""Small GGUF files written here with `gguf.GGUFWriter`, the way llama.cpp's converter writes them (its
tensor names, its q / k row permutation for Llama, its 1 + w for Gemma norms), from random
`transformers` models; and GGUF tokenizer metadata from small `tokenizers` vocabularies. No download.

Quantised types that `gguf.quants.quantize` cannot make (the K-quants) are filled with random blocks
whose scales are set to small finite fp16 values, so they decode to finite weights.
"""

from __future__ import annotations

import numpy as np

# HF per-layer key (after `model.layers.{i}.`) -> llama.cpp's name (after `blk.{i}.`).
_LAYER = {
  "input_layernorm": "attn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "self_attn.q_norm": "attn_q_norm",
  "self_attn.k_norm": "attn_k_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "post_feedforward_layernorm": "post_ffw_norm",
  "pre_feedforward_layernorm": "ffn_norm",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
# K-quant block layouts: (bytes per 256 values, byte offsets of the fp16 scales d / dmin).
_K_BLOCKS = {"Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's converter: per head, the 'rotate half' rows (a, b) become interleaved pairs."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(key: str, post_norms: bool) -> str:
  """llama.cpp's name of an HF state-dict key."""
  stem, _, kind = key.rpartition(".")
  if stem in _GLOBAL:
    return f"{_GLOBAL[stem]}.{kind}"
  _, _, layer, rest = stem.split(".", 3)
  names = dict(_LAYER)
  names["post_attention_layernorm"] = "post_attention_norm" if post_norms else "ffn_norm"
  return f"blk.{layer}.{names[rest]}.{kind}"


def random_k_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
  """Raw K-quant bytes [rows, cols / 256 * block] with random codes and small finite scales."""
  block, scale_offsets = _K_BLOCKS[qtype]
  raw = rng.integers(0, 256, size=(rows, cols // 256, block), dtype=np.uint8)
  for offset in scale_offsets:
    scales = rng.uniform(1e-5, 1e-4, size=(rows, cols // 256)).astype(np.float16)
    raw[..., offset : offset + 2] = scales.view(np.uint8).reshape(rows, cols // 256, 2)
  return raw.reshape(rows, -1)


def write_model(
  path: str,
  arch: str,
  hf_config: dict,
  state_dict: dict[str, np.ndarray],
  qtype: str = "F32",
  rng: np.random.Generator | None = None,
  extra: dict | None = None,
  add_metadata=None,
) -> dict[str, np.ndarray]:
  """Writes `state_dict` (HF names, fp32 numpy) as llama.cpp would for `arch`; 2-D weights whose input
    width allows it in `qtype`, the rest F32; `extra` {key: (value, GGUFValueType)} and `add_metadata(writer)`
  add metadata. Returns {gguf name: the values a reader must decode}."""
  import gguf

  rng = rng or np.random.default_rng(0)
  c = hf_config
  gemma = arch.startswith("gemma")
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(c["num_hidden_layers"])
  writer.add_context_length(c.get("max_position_embeddings", 2048))
  writer.add_embedding_length(c["hidden_size"])
  writer.add_feed_forward_length(c["intermediate_size"])
  writer.add_head_count(c["num_attention_heads"])
  writer.add_head_count_kv(c["num_key_value_heads"])
  writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
  rope = c.get("rope_parameters") or {}
  rope = rope.get("full_attention", rope)  # Gemma 3: per layer type
  writer.add_rope_freq_base(rope.get("rope_theta", c.get("rope_theta", 10_000.0)))
  writer.add_vocab_size(c["vocab_size"])
  head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  if c.get("sliding_window"):
    writer.add_sliding_window(c["sliding_window"])
  for key, value in (extra or {}).items():
    writer.add_key_value(key, value[0], value[1])
  if add_metadata is not None:
    add_metadata(writer)
  expected = {}
  for key, w in state_dict.items():
    name = gguf_name(key, post_norms=arch in ("gemma2", "gemma3"))
    if name == "output.weight" and c.get("tie_word_embeddings"):
      continue
    w = np.asarray(w, np.float32)
    if arch == "llama" and ".attn_q." in name:
      w = permute_rows(w, c["num_attention_heads"])
    if arch == "llama" and ".attn_k." in name:
      w = permute_rows(w, c["num_key_value_heads"])
    if gemma and name.endswith("norm.weight"):
      w = w + np.float32(1.0)
    kind = qtype if w.ndim == 2 else "F32"
    gtype = gguf.GGMLQuantizationType[kind]
    block = gguf.GGML_QUANT_SIZES[gtype][0]
    if w.shape[-1] % block:
      kind, gtype = "F32", gguf.GGMLQuantizationType.F32
    if kind == "F32":
      data = np.ascontiguousarray(w)
      writer.add_tensor(name, data)
    elif kind in _K_BLOCKS:
      data = random_k_blocks(kind, w.shape[0], w.shape[1], rng)
      writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gtype)
    else:
      data = gguf.quants.quantize(w, gtype)
      writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gtype)
    expected[name] = np.asarray(gguf.quants.dequantize(data, gtype), np.float32).reshape(w.shape)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return expected


def add_tokenizer(writer, tok, *, kind: str, pre: str | None, bos: int, eos: int, add_bos: bool) -> None:
  """Adds `tokenizers.Tokenizer` tok's vocabulary as GGUF tokenizer metadata ('gpt2': with merges)."""
  import json

  model = json.loads(tok.to_str())["model"]
  vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
  tokens = [t for t, _ in vocab]
  specials = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
  writer.add_tokenizer_model(kind)
  if pre:
    writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types([3 if t in specials else 1 for t in tokens])
  if kind == "gpt2":
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
  else:
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
  writer.add_bos_token_id(bos)
  writer.add_eos_token_id(eos)
  writer.add_add_bos_token(add_bos)
