"""Any model the library loads, from a path: a lime_jax run's workdir, a Hugging Face folder or a GGUF
file. The harness backend (evals/lm_harness.py) and lime_jax.inspect read models through `load`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from lime_jax import checkpoint, hf
from lime_jax import config as config_lib
from lime_jax.data import pipeline, subword
from lime_jax.gguf import reader as gguf_reader
from lime_jax.model import ModelConfig
from lime_jax.model.model_config import DTYPES

_HF_LENGTH_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")  # hf's order (resolve_max_length)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A loaded model: fp32 parameters, its ModelConfig, its tokenizer (None: an HF folder without
  tokenizer.json), the context length it states (a run's data.seq_len, config.json's; None: unknown)
  and where it came from."""

  params: Any
  cfg: ModelConfig
  tokenizer: Any
  max_length: int | None
  source: str


def inference_config(cfg: ModelConfig, dtype: str = "float32") -> ModelConfig:
  """`cfg` for evaluation: activations in `dtype`, no remat, cudnn attention only on a GPU."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r} is unknown; use one of {DTYPES}.")
  changes: dict[str, Any] = {"compute_dtype": dtype, "remat_policy": "none"}
  if cfg.attention_impl == "cudnn" and jax.default_backend() != "gpu":
    changes["attention_impl"] = "xla"
  return dataclasses.replace(cfg, **changes)


def _hf_max_length(path: str) -> int | None:
  """The context length config.json states (the fields the hf backend reads, in its order), or None."""
  if gguf_reader.gguf_file(path):
    return None
  config = hf.read_config(path)
  for key in _HF_LENGTH_FIELDS:
    if isinstance(config.get(key), int) and config[key] > 0:
      return int(config[key])
  return None


def load(
  path: str,
  step: int | None = None,
  tokenizer_required: bool = True,
  mesh: jax.sharding.Mesh | None = None,
) -> Loaded:
  """The model at `path`: a lime_jax run's workdir (`checkpoint.restore_params`, its newest intact
  checkpoint or `step`; the tokenizer of its saved data config), a Hugging Face folder or a .gguf file
  (`hf.load_sharded`, `subword.load_tokenizer`). `tokenizer_required=False` accepts an HF folder
  without tokenizer.json (tokenizer None). `mesh`: the parameters sharded on it by the training rules
  (lime_jax/runtime/sharding.py), each block read once by the process whose devices hold it; None: on
  one device (a workdir's: replicated on every device)."""
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"model={path!r} does not exist: give a lime_jax run's workdir, a Hugging Face folder or a .gguf file."
    )
  if os.path.isdir(os.path.join(path, "checkpoints")):
    restored = checkpoint.restore_params(path, step, mesh)
    config = config_lib.from_saved(restored.config)
    tokenizer = pipeline.open_task(config).tokenizer
    source = f"{path} (step {restored.step})"
    return Loaded(restored.params, restored.model_cfg, tokenizer, int(config.data.seq_len) or None, source)
  if step is not None:
    raise ValueError(f"step={step} applies to a lime_jax run's workdir, and {path!r} is not one.")
  if mesh is None:
    model_cfg, params = hf.load_pretrained(path, param_dtype="float32")
  else:
    model_cfg, params = hf.load_sharded(path, mesh, param_dtype="float32")
  tokenizer = None
  has_tokenizer = gguf_reader.gguf_file(path) or os.path.isfile(os.path.join(path, subword.TOKENIZER_JSON))
  if tokenizer_required or has_tokenizer:
    tokenizer = subword.load_tokenizer(path)
    if model_cfg.vocab_size < tokenizer.vocab_size:
      raise ValueError(
        f"the tokenizer of {path!r} has {tokenizer.vocab_size} ids but the model's embedding has "
        f"{model_cfg.vocab_size} rows: the tokenizer does not belong to this checkpoint."
      )
  return Loaded(params, model_cfg, tokenizer, _hf_max_length(path), path)
