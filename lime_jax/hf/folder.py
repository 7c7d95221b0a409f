"""Local Hugging Face folders and GGUF files: read them into lime_jax, and write HF folders back.

A folder holds `config.json` and `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` listed
in `model.safetensors.index.json`. Tensors are read with the `safetensors` library (numpy; no torch).
A `.gguf` file (or a folder holding one and no config.json) is read through lime_jax/gguf/reader.py,
which gives the same config.json dict and state dict (dequantised tensor by tensor). `open_source`
reads either block by block (lime_jax/hf/sharded.py loads through it).
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

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


class SafetensorsSource:
  """The tensors of a folder's safetensors file(s), each block read from the memory-mapped file on its
  own (`safe_open(...).get_slice(key)[...]`), never a whole file. `bytes_read` counts the stored bytes
  read; `log`, when a list, receives (key, block) of every read."""

  def __init__(self, files: list[str], log: list | None = None):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    self._handles = {}
    self._where: dict[str, str] = {}
    for file in files:
      self._handles[file] = handle = safe_open(file, framework="np")
      for key in handle.keys():
        if key in self._where:
          raise ValueError(f"tensor {key!r} appears in two safetensors files ({self._where[key]}, {file}).")
        self._where[key] = file
    self.bytes_read, self.log = 0, log

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in self._handles[self._where[key]].get_slice(key).get_shape())

  def read(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    x = self._handles[self._where[key]].get_slice(key)[index]
    self.bytes_read += x.nbytes
    if self.log is not None:
      self.log.append((key, tuple((s.start, s.stop) for s in index)))
    return np.asarray(x, np.float32)


class GGUFSource:
  """The HF state dict of a GGUF file. A block of rows of a 2-D tensor (an embedding's chunk, a
  vocabulary shard) is dequantised alone, the last one kept for the other devices' blocks of the same
  rows; any other read dequantises the tensor whole (in row chunks), kept among the last `cache` ones
  until `release`, so the blocks of several devices cost one dequantisation."""

  def __init__(self, ckpt: gguf_reader.GGUFCheckpoint, cache: int = 4, log: list | None = None):
    self._lazy = gguf_reader.state_dict(ckpt)
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._rows: tuple[str, tuple[int, int], np.ndarray] | None = None
    self._size, self.bytes_read, self.log = cache, 0, log

  def keys(self) -> list[str]:
    return list(self._lazy)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in self._lazy[key].shape)

  def release(self) -> None:
    """Drops the cached tensors (the loader calls it after each parameter leaf)."""
    self._cache.clear()
    self._rows = None

  def read(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    tensor = self._lazy[key]
    rows = (index[0].start, index[0].stop)
    if key not in self._cache and tensor.row_local and rows != (0, tensor.shape[0]):
      if self._rows is None or self._rows[:2] != (key, rows):
        self._rows = None  # freed before the next block is made
        self._rows = (key, rows, tensor.numpy(index[0]))
        self.bytes_read += int(tensor.stored_bytes * (rows[1] - rows[0]) // tensor.shape[0])
      if self.log is not None:
        self.log.append((key, tuple((s.start, s.stop) for s in index)))
      return self._rows[2][(slice(None), *index[1:])]
    if key not in self._cache:
      self._cache[key] = tensor.numpy()
      self.bytes_read += int(tensor.stored_bytes)
      while len(self._cache) > self._size:
        self._cache.popitem(last=False)
    self._cache.move_to_end(key)
    if self.log is not None:
      self.log.append((key, tuple((s.start, s.stop) for s in index)))
    return self._cache[key][index]


def open_source(path: str, log: list | None = None) -> SafetensorsSource | GGUFSource:
  """The tensors of an HF folder (safetensors, one file or shards) or a GGUF file, read block by block
  (lime_jax/hf/weights.py `TensorSource`); `log`: see SafetensorsSource."""
  if gguf_reader.gguf_file(path):
    return GGUFSource(gguf_reader.GGUFCheckpoint.open(path), log=log)
  return SafetensorsSource(safetensors_files(path), log=log)


def model_fields(path: str) -> dict[str, Any]:
  """The `config.model` field values (families.ARCH_FIELDS) that describe the folder's architecture.

  Raises ValueError, naming the config.json field, for anything the backbone does not implement.
  """
  fields = families.fields_from_hf(read_config(path))
  fields["global_layers"] = tuple(fields["global_layers"])
  return fields


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
