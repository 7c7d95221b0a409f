"""Checkpoints of training runs: one manager, one set of checks, one reader.

Modules (each imported by the next ones only):
  errors        CheckpointMismatchError (another config) vs DamagedCheckpointError (its files).
  integrity     digests.json written after each save and verified before every restore (`step_damage`);
                damaged steps moved aside to <step>.corrupt, the newest intact one used.
  structure     the architecture signature a checkpoint records (from the ModelConfig fields declared
                `option(arch=...)`) and the tree / shape check.
  manager       the one orbax CheckpointManager of a workdir (`open_manager`; state, data iterator, meta)
                and the save / restore of its items.
  checkpointer  the trainer's `Checkpointer`: saves, resumes from the newest intact step.
  restore       `restore_params` (evaluation, sampling, export) and `restore_raw_state` (init_from).
"""

from lime_jax.checkpoint.checkpointer import Checkpointer
from lime_jax.checkpoint.errors import CheckpointMismatchError, DamagedCheckpointError, DamagedFileError
from lime_jax.checkpoint.integrity import (
  DIGESTS,
  Intact,
  digest_damage,
  file_damage,
  restore_newest_intact,
  step_damage,
  write_digests,
)
from lime_jax.checkpoint.manager import open_manager
from lime_jax.checkpoint.restore import Restored, restore_params, restore_raw_state, saved_model_config
from lime_jax.checkpoint.structure import abstract_like, arch_signature, check_compatible, check_structure

__all__ = [
  "CheckpointMismatchError",
  "Checkpointer",
  "DIGESTS",
  "DamagedCheckpointError",
  "DamagedFileError",
  "Intact",
  "Restored",
  "abstract_like",
  "arch_signature",
  "check_compatible",
  "check_structure",
  "digest_damage",
  "file_damage",
  "open_manager",
  "restore_newest_intact",
  "restore_params",
  "restore_raw_state",
  "saved_model_config",
  "step_damage",
  "write_digests",
]
