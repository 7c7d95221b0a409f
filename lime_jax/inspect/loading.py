"""Any model the library loads, as one object: a lime_jax run, an HF folder or a GGUF file."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lime_jax.evals import loading
from lime_jax.model.model_config import DTYPES, ModelConfig


@dataclasses.dataclass(frozen=True)
class Model:
  """A model's architecture (`cfg`), parameters and tokenizer (None if unknown); `source` says where it
  came from. Build one from your own parameters with `Model(cfg, params)`."""

  cfg: ModelConfig
  params: Any
  tokenizer: Any = None
  source: str = ""

  def encode(self, text: str) -> list[int]:
    """`text`'s token ids with the special tokens the model's own tokenizer adds (a BOS only where it
    adds one), as the probes encode prompts."""
    from lime_jax.probes import common  # pylint: disable=import-outside-toplevel

    if self.tokenizer is None:
      raise ValueError(f"Model {self.source or '(given parameters)'} has no tokenizer: pass token ids.")
    return common.encode_prompt(self.tokenizer, text, self.cfg.vocab_size)

  def decode(self, ids: Any) -> str:
    """The text of token ids (one sequence)."""
    if self.tokenizer is None:
      raise ValueError(f"Model {self.source or '(given parameters)'} has no tokenizer.")
    return self.tokenizer.decode([int(i) for i in ids])


def load(
  path: str, dtype: str = "float32", step: int | None = None, mesh: jax.sharding.Mesh | None = None
) -> Model:
  """The model at `path`: a lime_jax run's workdir (its newest intact checkpoint, or `step`), a Hugging
  Face folder (config.json, *.safetensors, and tokenizer.json if it has one) or a GGUF file; a gs:// path
  is copied to a local folder first. Parameters are fp32 (as a run stores them), activations in `dtype`
  ('float32' or 'bfloat16'). `mesh`: parameters sharded on it by the training rules (a model larger than
  one device; `lime_jax.probes.runner.eval_mesh(fsdp, tensor)` makes one), results as on one device.
  (lime_jax/evals/loading.py `load`, as the harness backend reads models.)"""
  from lime_jax.probes import pretrained  # pylint: disable=import-outside-toplevel

  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r} is unknown; use one of {DTYPES}.")
  local = pretrained.local_folder(path) if "://" in str(path) else path
  loaded = loading.load(local, step, tokenizer_required=False, mesh=mesh)
  return Model(loading.inference_config(loaded.cfg, dtype), loaded.params, loaded.tokenizer, loaded.source)
