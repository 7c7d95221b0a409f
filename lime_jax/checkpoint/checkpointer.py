"""The trainer's checkpoints: saves (train state, data iterator, meta) and resumes from the newest intact
step, through the workdir's one manager (manager.py), its checks (structure.py) and the integrity checks
(integrity.py). `meta` records the model config and its architecture signature; digests follow a save
once orbax has committed the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lime_jax.checkpoint import integrity, structure
from lime_jax.checkpoint import manager as manager_lib


class Checkpointer:
  """Saves and restores (train state, data iterator, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    self.directory = manager_lib.checkpoints_dir(workdir)
    self._options = dict(create=True, max_to_keep=max_to_keep, async_save=async_save)
    self._saved: list[int] = []  # steps saved by this object: `wait` writes any digests the hook missed
    self.manager = manager_lib.open_manager(workdir, **self._options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
    """Saves a step (async when so configured); its digests follow once it has committed."""
    args = manager_lib.save_args(state, data_iterator, {**meta, "digests": integrity.DIGESTS})
    saved = self.manager.save(step, args=args, force=force)
    self._saved.append(step)
    return saved

  def read_meta(self, step: int) -> dict:
    return manager_lib.read_meta(self.manager, step)

  def check_compatible(self, step: int, signature: dict[str, Any]) -> None:
    """Raises CheckpointMismatchError listing the model fields where the checkpoint and the config
    disagree (an unreadable `meta` raises the read error: damage, not a mismatch)."""
    structure.check_compatible(self.read_meta(step).get("arch", {}), signature, f"{self.directory}/{step}")

  def check_structure(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointMismatchError if the saved state's tree or shapes (from orbax's metadata) differ
    from `abstract_state`'s; an unreadable metadata file raises the read error (damage)."""
    structure.check_structure(
      manager_lib.state_metadata(self.manager, step),
      abstract_state,
      f"{self.directory}/{step}",
      "Use a new --workdir or the config it was made with.",
    )

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    """Restores the state into the shardings of `abstract_state`, then the iterator in place (only once
    the state has been read). A mismatch raises CheckpointMismatchError; anything else is a read error."""
    self.check_structure(step, abstract_state)
    state = manager_lib.restore_state(self.manager, step, abstract_state)
    if data_iterator is not None:
      manager_lib.restore_data(self.manager, step, data_iterator)
    return state

  def restore_latest_intact(
    self,
    abstract_state: Any,
    data_iterator: Any | None,
    signature: dict[str, Any],
    log: Callable[[str], None] = print,
  ) -> integrity.Intact:
    """The newest intact step restored (`integrity.restore_newest_intact`): meta readable and compatible
    with `signature`, the state's metadata matching `abstract_state`, state and data iterator restorable.
    Damaged newer steps are moved aside; the manager is then re-created (it caches its step list)."""

    def attempt(step: int) -> Any:
      self.check_compatible(step, signature)
      return self.restore(step, abstract_state, data_iterator)

    items = ("state", "meta") + (("data",) if data_iterator is not None else ())
    found = integrity.restore_newest_intact(self.directory, self.all_steps(), attempt, items, log)
    if found.moved:
      self.manager.close()
      self.manager = manager_lib.open_manager(self.workdir, **self._options)
    return found

  def wait(self) -> None:
    """Waits for the pending save; every step saved so far then has its digests."""
    self.manager.wait_until_finished()
    for step in self._saved:
      integrity.ensure_digests(self.directory, step)
    self._saved = []

  def close(self) -> None:
    self.wait()
    self.manager.close()
