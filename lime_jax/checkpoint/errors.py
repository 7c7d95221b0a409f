"""Why a checkpoint cannot be used: its files are damaged, or it was made for another config."""

from __future__ import annotations

from lime_jax.runtime.errors import UserError


class CheckpointMismatchError(UserError, ValueError):
  """The checkpoint is readable but was made for another config (model fields, tree structure, shapes)."""


class DamagedCheckpointError(UserError, RuntimeError):
  """A checkpoint step cannot be read: a missing, truncated or corrupt file."""


class DamagedFileError(Exception):
  """Raised inside a restore attempt when a file reads but holds what no clean save writes (`where`:
  'FILE (why)'); the step is damaged."""

  def __init__(self, where: str):
    super().__init__(where)
    self.where = where
