"""Inspecting a model's internals from Python: load any model, cache and edit its activations, read
them through the logit lens (docs/inspect.md).

  model = inspect.load("path/to/run-or-hf-folder-or.gguf")
  logits_BTV, acts = inspect.run_with_cache(model, tokens_BT, names=("hidden", "attn_out"))
  acts["hidden"]  # [L, B, T, D], layer by layer
  steer = inspect.Edit("hidden", "add", v_D, layers=(3,))
  logits_BTV, acts = inspect.run_with_cache(model, tokens_BT, edits=[steer])
  lens = inspect.logit_lens(model, tokens_BT, target_ids_BT)

The activation names and their shapes: `POINTS` (per layer) and `FINAL_POINTS` (lime_jax/model/taps.py).
Representation metrics over what you cache: lime_jax.analysis.representation.
"""

from lime_jax.inspect.cache import run_with_cache
from lime_jax.inspect.lens import LogitLens, logit_lens, plot_logit_lens
from lime_jax.inspect.loading import Model, load
from lime_jax.model.taps import FINAL_POINTS, POINTS, Edit

__all__ = [
  "FINAL_POINTS",
  "POINTS",
  "Edit",
  "LogitLens",
  "Model",
  "load",
  "logit_lens",
  "plot_logit_lens",
  "run_with_cache",
]
