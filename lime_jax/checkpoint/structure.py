"""Is a checkpoint made for this model? The architecture signature it records, and the shape check.

`meta` records the architecture signature of the model config the state was made with (`arch_signature`:
the ModelConfig fields declared with `option(arch='params' | 'params_if_set' | 'checkpoint')`, plus what
the topology and Seq-VCR add); restoring under a config with another signature fails early naming the
fields that differ (`check_compatible`), and a saved tree whose leaves or shapes differ from the target's
fails naming the leaves (`check_structure`). Both raise CheckpointMismatchError, never damage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from lime_jax.checkpoint.errors import CheckpointMismatchError
from lime_jax.model import model_config
from lime_jax.model.topologies import get_topology

# Model fields every checkpoint records: a change makes its parameters unusable (tree, shapes or dtype).
_SIGNATURE = model_config.arch_fields("params", "checkpoint")
# Backbone options of the pretrained families (lime_jax/hf/) that add or reshape parameters, with their
# defaults: in the signature only when set, so checkpoints written before they existed still match.
_SIGNATURE_IF_SET = {
  name: default
  for name, default in model_config.defaults(model_config.ModelConfig).items()
  if name in model_config.arch_fields("params_if_set")
}


def arch_signature(model_cfg: Any, vocab_size: int | None = None) -> dict[str, Any]:
  """The part of the model config a checkpoint must agree with; `model_cfg` is a `config.model`
  (`vocab_size` fills its 0, the tokenizer's) or a ModelConfig."""
  if dataclasses.is_dataclass(model_cfg):
    vocab_size = model_cfg.vocab_size
    model_cfg = ml_collections.ConfigDict(dataclasses.asdict(model_cfg))
  sig = {k: model_cfg[k] for k in _SIGNATURE if k in model_cfg}
  sig["vocab_size"] = int(model_cfg.vocab_size or vocab_size)
  sig["num_kv_heads"] = int(model_cfg.num_kv_heads or model_cfg.num_heads)
  sig.update({k: model_cfg[k] for k, v in _SIGNATURE_IF_SET.items() if k in model_cfg and model_cfg[k] != v})
  topology_signature = get_topology(model_cfg.topology).signature
  if topology_signature is not None:  # e.g. LIMe's router kind
    sig.update(topology_signature(model_cfg))
  if "seq_vcr" in model_cfg and model_cfg.seq_vcr.enabled and model_cfg.seq_vcr.proj_dim:
    # params['seq_vcr_proj'] [K, D, P] exists only then.
    sig["seq_vcr.projection"] = [len(model_cfg.seq_vcr.layers), int(model_cfg.seq_vcr.proj_dim)]
  return sig


def check_compatible(saved: dict[str, Any], signature: dict[str, Any], where: str) -> None:
  """Raises CheckpointMismatchError listing the model fields where the checkpoint at `where` (its
  recorded signature `saved`, meta['arch']) and the config (`signature`) disagree."""
  diffs = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
  if diffs:
    lines = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
    raise CheckpointMismatchError(
      f"The checkpoint at {where} was made with a different model config ({lines}). "
      "Use a new --workdir, or set these fields back to the checkpoint's values."
    )


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/embed': shape, ...} of a tree of arrays, ShapeDtypeStructs or orbax array metadata."""
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def check_structure(saved: Any, target: Any, where: str, fix: str) -> None:
  """Raises CheckpointMismatchError naming the leaves (at most 6) whose shape in the checkpoint at `where`
  (`saved`: its metadata tree) differs from `target`'s, or that only one of them has; `fix` says what
  to do."""
  have, want = shapes(saved), shapes(target)
  problems = [f"{k}: checkpoint {have.get(k)} vs config {v}" for k, v in want.items() if have.get(k) != v]
  problems += [f"{k}: in the checkpoint, not in the config" for k in have if k not in want]
  if problems:
    raise CheckpointMismatchError(
      f"Checkpoint {where} is intact but does not match this config's state structure or shapes "
      f"({len(problems)} differ: {'; '.join(problems[:6])}). {fix}"
    )


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )
