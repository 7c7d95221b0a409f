"""Local Hugging Face folders and GGUF files: read them into lime_jax, and write HF folders back.

A folder holds `config.json` and `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` listed
in `model.safetensors.index.json`. Tensors are read with the `safetensors` library (numpy; no torch).
A `.gguf` file (or a folder holding one and no config.json) is read through lime_jax/gguf/reader.py,
which gives the same config.json dict and state dict (dequantised tensor by tensor).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from lime_jax.gguf import reader as gguf_reader
from lime_jax.hf import families, weights
from lime_jax.model.model_config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_config(path: str) -> dict[str, Any]:
  """The folder's config.json as a dict (for a GGUF file: the equivalent one, from its metadata)."""
  if gguf_reader.gguf_file(path):
    return gguf_reader.hf_config(gguf_reader.GGUFCheckpoint.open(path))
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path!r} has no config.json: pass a local Hugging Face model folder.")
  with open(config_path) as f:
    return json.load(f)


def safetensors_files(path: str) -> list[str]:
  """The weight files of a folder: the shards of the index, model.safetensors, or every *.safetensors."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
    files = [SINGLE_FILE]
  else:
    files = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(
      f"{path!r} has no *.safetensors weights (pytorch_model.bin is not read: "
      "convert it with transformers' save_pretrained(safe_serialization=True))."
    )
  missing = [name for name in files if not os.path.isfile(os.path.join(path, name))]
  if missing:
    raise FileNotFoundError(f"{path!r}: {INDEX_FILE} lists shards that are not there: {missing}.")
  return [os.path.join(path, name) for name in files]


def read_state_dict(path: str) -> Mapping[str, Any]:
  """Every tensor of the folder's safetensors file(s), as numpy arrays in their stored dtype; for a GGUF
  file, a mapping whose values are dequantised (to fp32) when numpy reads them."""
  if gguf_reader.gguf_file(path):
    return gguf_reader.state_dict(gguf_reader.GGUFCheckpoint.open(path))
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  sd: dict[str, np.ndarray] = {}
  for file in safetensors_files(path):
    with safe_open(file, framework="np") as f:
      for key in f.keys():
        if key in sd:
          raise ValueError(f"tensor {key!r} appears in two safetensors files of {path!r}.")
        sd[key] = f.get_tensor(key)
  return sd


def model_fields(path: str) -> dict[str, Any]:
  """The `config.model` field values (families.ARCH_FIELDS) that describe the folder's architecture.

  Raises ValueError, naming the config.json field, for anything the backbone does not implement.
  """
  fields = families.fields_from_hf(read_config(path))
  fields["global_layers"] = tuple(fields["global_layers"])
  return fields


def load_pretrained(
  path: str,
  model_cfg: ModelConfig | None = None,
  *,
  param_dtype: str | None = None,
  rng: jax.Array | None = None,
) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params in lime_jax layout) of a local HF folder.

  `model_cfg`, when given, keeps its non-architecture fields (topology, dtypes, attention_impl, remat,
  LIMe / Seq-VCR settings...); its architecture fields are replaced by the checkpoint's. The topology's
  own parameters (params['router']) and a Seq-VCR projection are freshly initialised from `rng`: with an
  identity-preserving setting (lime.init='identity', value_residual.init_lambda=0; DenseFormer and
  Hyper-Connections are the identity at init) the logits equal the pretrained plain model's (upcycling).
  `param_dtype` is the dtype of the returned parameters (cfg.param_dtype); None: model_cfg's, else
  'float32'. Tensors are read in their stored dtype and converted through fp32.
  """
  from lime_jax.model import regularizers, topologies, transformer  # pylint: disable=g-import-not-at-top

  fields = model_fields(path)
  if gguf_reader.gguf_file(path):
    info = gguf_reader.describe(gguf_reader.GGUFCheckpoint.open(path))
    logging.info(
      "GGUF %s: architecture %s, %d parameters, tensor types %s",
      info["file"],
      info["architecture"],
      info["parameters"],
      info["tensor_types"],
    )
  base = model_cfg if model_cfg is not None else ModelConfig(vocab_size=fields["vocab_size"])
  cfg = dataclasses.replace(base, **fields, param_dtype=param_dtype or base.param_dtype)
  _warn_if_not_identity(cfg)
  params = weights.hf_state_dict_to_params(read_state_dict(path), cfg)
  rng = jax.random.key(0) if rng is None else rng
  topology = topologies.get_topology(cfg.topology)
  if topology.init_params is not None:
    params["router"] = topology.init_params(jax.random.fold_in(rng, 0), cfg)
  if cfg.seq_vcr.enabled and cfg.seq_vcr.proj_dim:
    params["seq_vcr_proj"] = regularizers.init_projection(jax.random.fold_in(rng, 1), cfg)
  want = jax.eval_shape(lambda key: transformer.init_params(cfg, key), jax.random.key(0))
  shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
  if shapes(want) != shapes(params):
    raise ValueError(
      f"{path!r}: the converted parameters do not match the model of this config; "
      f"expected {shapes(want)}, got {shapes(params)}."
    )
  return cfg, params


def _warn_if_not_identity(cfg: ModelConfig) -> None:
  if cfg.topology == "lime" and cfg.lime.init != "identity":
    logging.warning(
      "Upcycling into LIMe with lime.init=%r: the step-0 logits differ from the pretrained "
      "model's; use lime.init='identity' to start from them.",
      cfg.lime.init,
    )
  if cfg.topology == "value_residual" and cfg.value_residual.init_lambda != 0.0:
    logging.warning(
      "Upcycling into value_residual with init_lambda=%s: the step-0 logits differ from "
      "the pretrained model's; init_lambda=0 starts from them.",
      cfg.value_residual.init_lambda,
    )


def save_pretrained(params: Any, cfg: ModelConfig, out_dir: str) -> None:
  """Writes config.json + model.safetensors that `transformers.AutoModelForCausalLM.from_pretrained`
  loads to the same logits (plain topology only). Stored in cfg.param_dtype (fp32 or bf16)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  hf_config = families.hf_config_for(cfg)
  sd = weights.params_to_hf_state_dict(params, cfg)
  if cfg.tie_embeddings:
    del sd["lm_head.weight"]  # transformers ties it to the embedding on load
  dtype = np.dtype(cfg.pdtype)
  sd = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in sd.items()}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  save_file(sd, os.path.join(out_dir, SINGLE_FILE), metadata={"format": "pt"})
