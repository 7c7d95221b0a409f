"""One checkpoint reader: training resumes, `evaluate --workdir`, sampling, export and raw-state restores
open the workdir's manager in one place (lime_jax/checkpoint/manager.py: `open_manager`), verify the
step's files in one place (integrity.step_damage) before orbax reads it, and refuse a checkpoint made
for another architecture with one message naming the field. In-process calls on one tiny run."""

from __future__ import annotations

import json
import shutil

import orbax.checkpoint as ocp
import pytest

from lime_jax import checkpoint
from lime_jax.checkpoint import integrity
from lime_jax.checkpoint import manager as manager_lib
from lime_jax.probes import runner
from lime_jax.tools import export, sample
from lime_jax.train import loop as train_lib
from tests.helpers.runs import tiny_config

STEPS = dict(num_steps=4, checkpoint_every=2, log_every=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_reader") / "run"
  train_lib.train(tiny_config(**STEPS), str(workdir))
  return workdir


def copy_of(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("lock.json"))
  return workdir


def _no_probes(monkeypatch):
  """`evaluate` restores as usual and runs no probe (the restore is what is tested)."""
  monkeypatch.setattr(runner, "run_probes", lambda *args, **kwargs: {})


def test_every_restore_opens_the_one_manager_and_verifies_the_step(trained, tmp_path, monkeypatch):
  workdir = copy_of(trained, tmp_path)
  _no_probes(monkeypatch)
  events: list[tuple[str, str]] = []
  real_open, real_damage, real_init = (
    manager_lib.open_manager,
    integrity.step_damage,
    ocp.CheckpointManager.__init__,
  )

  def opened(path, **kwargs):
    events.append(("open", str(path)))
    return real_open(path, **kwargs)

  def verified(step_dir, items):
    events.append(("verify", str(step_dir)))
    return real_damage(step_dir, items)

  def constructed(self, *args, **kwargs):  # any CheckpointManager at all, wherever it is built
    events.append(("manager", type(self).__name__))
    real_init(self, *args, **kwargs)

  monkeypatch.setattr(manager_lib, "open_manager", opened)
  monkeypatch.setattr(integrity, "step_damage", verified)
  monkeypatch.setattr(ocp.CheckpointManager, "__init__", constructed)
  step_dir = f"{workdir}/checkpoints/4"
  paths = {
    "train (resume)": lambda: train_lib.train(tiny_config(**STEPS), str(workdir)),
    "evaluate --workdir": lambda: runner.evaluate(str(workdir), ["entropy"]),
    "sample": lambda: sample.generate(str(workdir), "1+2=", temperature=0.0, max_new=2),
    "export": lambda: export.export(str(workdir), str(tmp_path / "hf")),
    "init_from (raw state)": lambda: checkpoint.restore_raw_state(str(workdir)),
  }
  for name, call in paths.items():
    events.clear()
    call()
    assert ("open", str(workdir)) in events, (name, events)
    assert ("verify", step_dir) in events, (name, events)
    managers = [kind for what, kind in events if what == "manager"]
    assert managers and set(managers) == {"DigestingManager"}, (name, events)  # none built elsewhere
    assert len(managers) == sum(what == "open" for what, _ in events), (name, events)


def _as_made_with(workdir, step: int, **model) -> None:
  """The step's meta rewritten as if its run's config had `model` (its recorded architecture, the
  parameters and the digests stay consistent: an intact checkpoint of another architecture)."""
  step_dir = workdir / "checkpoints" / str(step)
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  meta["config"]["model"].update(model)
  (step_dir / "meta" / "metadata").write_text(json.dumps(meta))
  checkpoint.write_digests(str(step_dir))


def test_an_incompatible_checkpoint_is_refused_by_every_path_with_one_message(trained, tmp_path, monkeypatch):
  workdir = copy_of(trained, tmp_path)
  _no_probes(monkeypatch)
  _as_made_with(workdir, 4, num_layers=3)
  config = tiny_config(**STEPS)
  config.model.num_layers = 3
  paths = {
    "train (resume)": lambda: train_lib.train(config, str(workdir)),
    "evaluate --workdir": lambda: runner.evaluate(str(workdir), ["entropy"]),
    "sample": lambda: sample.generate(str(workdir), "1+2=", max_new=2),
    "export": lambda: export.export(str(workdir), str(tmp_path / "hf")),
  }
  messages = {}
  for name, call in paths.items():
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
      call()
    messages[name] = str(e.value)
  want = (
    f"The checkpoint at {workdir}/checkpoints/4 was made with a different model config "
    "(model.num_layers: checkpoint 2 vs config 3). Use a new --workdir, or set these fields back to the "
    "checkpoint's values."
  )
  assert messages == {name: want for name in paths}
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]  # a mismatch moves nothing
