"""Random Llama checkpoints written from numpy alone (no torch, no transformers): an HF folder
(config.json + safetensors, optionally split into shards with an index) and the same tensors as a GGUF
file. Fast to write at any size, for the sharded loader's tests (tests/helpers/sharded_load_worker.py)."""

from __future__ import annotations

import json
import os

import numpy as np


def llama_config(
  hidden: int = 64, layers: int = 2, heads: int = 8, kv_heads: int = 4, ffn: int = 128, vocab: int = 320
) -> dict:
  """The config.json dict of a Llama model of these sizes (untied embeddings)."""
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": vocab,
    "hidden_size": hidden,
    "intermediate_size": ffn,
    "num_hidden_layers": layers,
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "head_dim": hidden // heads,
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
  }


def llama_state_dict(config: dict, seed: int = 0, std: float = 0.05) -> dict[str, np.ndarray]:
  """Random fp32 tensors under HF Llama names; norm weights 1 + N(0, 0.1) so a misplaced one shows."""
  g = np.random.default_rng(seed)
  D, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  H = config["head_dim"]
  N, R = config["num_attention_heads"], config["num_key_value_heads"]
  w = lambda *shape: (std * g.standard_normal(shape, np.float32)).astype(np.float32)
  norm = lambda n: (1.0 + 0.1 * g.standard_normal(n, np.float32)).astype(np.float32)
  sd = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": norm(D), "lm_head.weight": w(V, D)}
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    sd.update(
      {
        p + "input_layernorm.weight": norm(D),
        p + "post_attention_layernorm.weight": norm(D),
        p + "self_attn.q_proj.weight": w(N * H, D),
        p + "self_attn.k_proj.weight": w(R * H, D),
        p + "self_attn.v_proj.weight": w(R * H, D),
        p + "self_attn.o_proj.weight": w(D, N * H),
        p + "mlp.gate_proj.weight": w(F, D),
        p + "mlp.up_proj.weight": w(F, D),
        p + "mlp.down_proj.weight": w(D, F),
      }
    )
  return sd


def write_folder(out_dir: str, config: dict, state_dict: dict[str, np.ndarray], shards: int = 1) -> str:
  """config.json + model.safetensors, or `shards` files with model.safetensors.index.json."""
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  if shards == 1:
    save_file(state_dict, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
  keys = list(state_dict)
  weight_map = {}
  for s in range(shards):
    name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: state_dict[k] for k in keys[s::shards]}
    save_file(part, os.path.join(out_dir, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in part})
  with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return out_dir


def write_gguf(path: str, config: dict, state_dict: dict[str, np.ndarray], qtype: str = "F32") -> str:
  """The same model as a llama.cpp GGUF file (tests/helpers/gguf_tiny.py `write_model`)."""
  from tests.helpers.gguf_tiny import write_model

  write_model(path, "llama", config, state_dict, qtype=qtype)
  return path


def probe_folder(work: str) -> str:
  """WORK/llama: a random Llama (8 heads, 4 kv heads: fsdp / tensor meshes of 8 split them) with a
  locally trained BPE (tests/helpers/hf_tiny.py), for the probes; written once."""
  from tests.helpers import hf_tiny

  folder = os.path.join(work, "llama")
  if not os.path.isfile(os.path.join(folder, "config.json")):
    assert hf_tiny.train_bpe(folder, vocab_size=320) <= 320
    config = llama_config(hidden=64, layers=2, heads=8, kv_heads=4, ffn=128, vocab=320)
    write_folder(folder, config, llama_state_dict(config, std=0.2))
  return folder
