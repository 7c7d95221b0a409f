"""A damaged checkpoint does not stop a run: training and `restore_params` move it aside to
<step>.corrupt, name the step and the file, and use the newest intact step; bytes changed after the save
fail the step's digests; a data iterator position that is not the step is damage; a config mismatch is
reported as such; a resumed run keeps one metrics record per step.

One tiny run (checkpoints 20, 30, 40) is trained per module; each test damages a copy of it."""

from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.train import loop as train_lib
from tests.helpers.runs import assert_same_state, tiny_config

STEPS = dict(num_steps=40, checkpoint_every=10, log_every=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("damage") / "run"
  train_lib.train(tiny_config(**STEPS), str(workdir))
  assert ckpt_lib.Checkpointer(str(workdir)).all_steps() == [20, 30, 40]
  return workdir


def copy_of(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("lock.json"))
  return workdir


def random_bytes_in_every_data_file(step_dir):
  """Random bytes over every OCDBT data file of the state, so the parameters are damaged whichever
  files orbax put them in (evaluate reads only the parameters: a damaged optimizer state alone does
  not stop it)."""
  data_dirs = [os.path.join(r, "d") for r, dirs, _ in os.walk(step_dir / "state") if "d" in dirs]
  for directory in data_dirs:
    for name in os.listdir(directory):
      path = os.path.join(directory, name)
      with open(path, "wb") as f:
        f.write(os.urandom(os.path.getsize(path)))


DAMAGES = {  # name: (inject(step_dir), what the log line names)
  "manifest_deleted": (
    lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "40/state/manifest.ocdbt (missing)",
  ),
  "metadata_garbage": (
    lambda d: (d / "state" / "_METADATA").write_text("garbage{"),
    "40/state/_METADATA (not valid JSON)",
  ),
  "meta_deleted": (lambda d: shutil.rmtree(d / "meta"), "40/meta (missing)"),
  "data_deleted": (lambda d: shutil.rmtree(d / "data"), "40/data (missing)"),
}


def checkpoint_dirs(workdir):
  return sorted(os.listdir(workdir / "checkpoints"))


# ------------------------------------------------------------------------------------------------ main
@pytest.mark.parametrize("kind", list(DAMAGES))
def test_train_moves_a_damaged_step_aside_and_resumes_from_the_newest_intact(trained, tmp_path, capsys, kind):
  inject, names = DAMAGES[kind]
  workdir = copy_of(trained, tmp_path)
  inject(workdir / "checkpoints" / "40")
  train_lib.train(tiny_config(**STEPS), str(workdir))
  log = capsys.readouterr().out
  assert f"Checkpoint step 40 is damaged ({workdir}/checkpoints/{names}" in log, log
  assert f"Resumed from {workdir}/checkpoints/30." in log
  assert "does not match" not in log  # damage, not a config mismatch
  assert "40.corrupt" in checkpoint_dirs(workdir) and "40" in checkpoint_dirs(workdir)  # kept, redone
  assert_same_state(workdir, trained, 40)


def as_saved_before_digests(step_dir):
  """A step as saved before digests existed: no digests.json, and a meta that does not promise one."""
  (step_dir / ckpt_lib.DIGESTS).unlink()
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  del meta["digests"]
  (step_dir / "meta" / "metadata").write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------- digests
def flip_bytes(path, offset: int, n: int = 4) -> None:
  data = bytearray(path.read_bytes())
  for i in range(offset, offset + n):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def largest_data_file(step_dir):
  """The largest OCDBT data file of the state (array chunks)."""
  return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("async_save", [True, False])
def test_digests_are_written_once_orbax_has_committed_the_step(tmp_path, async_save):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=async_save)
  state = {"w": jax.numpy.arange(1000.0), "b": jax.numpy.ones((3, 4))}
  checkpointer.save(7, state, None, {"step": 7}, force=True)
  checkpointer.manager.wait_until_finished()  # orbax's own wait: the commit hook wrote them
  step_dir = tmp_path / "checkpoints" / "7"
  record = json.loads((step_dir / ckpt_lib.DIGESTS).read_text())
  assert record["algorithm"] == "sha256" and "state/_METADATA" in record["files"]
  assert ckpt_lib.digest_damage(str(step_dir), ("state", "meta")) is None
  assert ckpt_lib.Checkpointer(str(tmp_path)).all_steps() == [7]  # orbax ignores the extra file
  checkpointer.close()


def test_flipped_bytes_in_array_data_are_damage_in_main_evaluate_and_raw_restores(trained, tmp_path, capsys):
  workdirs = [copy_of(trained, tmp_path / name) for name in ("main", "evaluate")]
  for workdir in workdirs:
    target = largest_data_file(workdir / "checkpoints" / "40")
    flip_bytes(target, target.stat().st_size // 2)
  relpath = os.path.relpath(target, workdirs[1] / "checkpoints")
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=rf"{relpath} \(sha256 differs"):
    ckpt_lib.restore_raw_state(str(workdirs[0]), 40)

  train_lib.train(tiny_config(**STEPS), str(workdirs[0]))
  log = capsys.readouterr().out
  assert f"Checkpoint step 40 is damaged ({workdirs[0]}/checkpoints/{relpath} (sha256 differs" in log, log
  assert (
    f"Resumed from {workdirs[0]}/checkpoints/30." in log and "learning_rate" not in log.split("Resumed")[0]
  )
  assert_same_state(workdirs[0], trained, 40)  # the redone step 40 is the clean run's

  step = ckpt_lib.restore_params(str(workdirs[1])).step
  assert step == 30 and f"{relpath} (sha256 differs" in capsys.readouterr().err
  assert checkpoint_dirs(workdirs[1]) == ["20", "30", "40.corrupt"]


def test_a_step_saved_before_digests_is_accepted_and_a_promised_missing_one_is_damage(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  step_dir = workdir / "checkpoints" / "40"
  items = ("state", "meta", "data")
  (step_dir / ckpt_lib.DIGESTS).unlink()  # killed between orbax's commit and the digests
  assert (
    ckpt_lib.digest_damage(str(step_dir), items)
    == f"{step_dir}/digests.json (missing: the save did not finish)"
  )
  as_saved_before_digests(workdir / "checkpoints" / "30")
  assert ckpt_lib.digest_damage(str(workdir / "checkpoints" / "30"), items) is None
  (workdir / "checkpoints" / "20" / ckpt_lib.DIGESTS).write_text("{not json")
  assert ckpt_lib.digest_damage(str(workdir / "checkpoints" / "20"), items).endswith("(not valid JSON)")


def test_a_data_position_that_is_not_the_step_is_damage(trained, tmp_path, capsys):
  """An edited (or mixed-up) iterator state, even with digests that match it, is not resumed from."""
  workdir = copy_of(trained, tmp_path)
  step_dir = workdir / "checkpoints" / "40"
  (step_dir / "data" / "process_0-of-1.json").write_text(json.dumps({"next_index": 37}))
  ckpt_lib.write_digests(str(step_dir))
  train_lib.train(tiny_config(**STEPS), str(workdir))
  log = capsys.readouterr().out
  assert (
    "Checkpoint step 40 is damaged (" in log
    and "data iterator at batch 37, but the state is at step 40" in log
  )
  assert f"Resumed from {workdir}/checkpoints/30." in log
  assert_same_state(workdir, trained, 40)


def test_a_mismatch_is_reported_as_a_mismatch_and_moves_nothing(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  checkpointer = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  _, raw = ckpt_lib.restore_raw_state(str(workdir), 40)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), raw)
  abstract["params"]["embed"] = jax.ShapeDtypeStruct((7, 3), np.float32)
  signature = checkpointer.read_meta(40)["arch"]
  with pytest.raises(
    ckpt_lib.CheckpointMismatchError,
    match=r"/40 is intact but does not match this config's state structure or shapes "
    r"\(1 differ: params/embed: checkpoint \(\d+, 32\) vs config \(7, 3\)\)\. "
    r"Use a new --workdir",
  ):
    checkpointer.restore_latest_intact(abstract, None, signature)
  checkpointer.close()
  assert checkpoint_dirs(workdir) == ["20", "30", "40"]


# -------------------------------------------------------------------------------------------- evaluate
def test_evaluate_uses_the_newest_intact_step(trained, tmp_path, capsys):
  workdir = copy_of(trained, tmp_path)
  random_bytes_in_every_data_file(workdir / "checkpoints" / "40")
  shutil.rmtree(workdir / "checkpoints" / "30" / "meta")
  shutil.rmtree(workdir / "checkpoints" / "20" / "data")  # evaluate does not need it
  step, _, _, params = ckpt_lib.restore_params(str(workdir))
  err = capsys.readouterr().err
  assert step == 20 and "step 20 is damaged" not in err
  assert f"Checkpoint step 40 is damaged ({workdir}/checkpoints/40/state/" in err  # the file, by digest
  assert f"Checkpoint step 30 is damaged ({workdir}/checkpoints/30/meta (missing)" in err
  assert checkpoint_dirs(workdir) == ["20", "30.corrupt", "40.corrupt"]
  _, raw = ckpt_lib.restore_raw_state(str(workdir), 20)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(raw["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------- metrics
def tensorboard_steps(logdir, tag):
  """The steps TensorBoard shows for `tag`: event files in order, a SessionLog START at step s (the
  purge step) hiding the earlier files' events at steps >= s."""
  from tensorboardX.proto import event_pb2

  steps: list[int] = []
  for name in sorted(os.listdir(logdir)):
    data, i = (logdir / name).read_bytes(), 0
    while i + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        steps = [s for s in steps if s < event.step]
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def test_resume_after_a_kill_keeps_one_metrics_record_per_step(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  # Killed after step 40's metrics were written, before its checkpoint committed, mid-way through a line.
  shutil.rmtree(workdir / "checkpoints" / "40")
  with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 41, "split": "tr')
  train_lib.train(tiny_config(**STEPS), str(workdir))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == list(range(5, 41, 5))
  assert [r["step"] for r in records if r["split"] == "eval"] == [40]
  assert tensorboard_steps(workdir / "tensorboard", "train/loss") == list(range(5, 41, 5))
  assert_same_state(workdir, trained, 40)


def test_a_finished_run_started_again_keeps_one_eval_record_and_its_train_metrics(trained, tmp_path):
  """Started again on its finished workdir (e.g. to re-evaluate), a run restores step 40, trains no
  step and evaluates again: metrics.jsonl still has one eval record at 40, and final_metrics.json keeps
  the train metrics of step 40 (not {})."""
  workdir = copy_of(trained, tmp_path)
  before = json.loads((workdir / "final_metrics.json").read_text())
  train_lib.train(tiny_config(**STEPS), str(workdir))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "eval"] == [40]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(5, 41, 5))
  after = json.loads((workdir / "final_metrics.json").read_text())
  assert after["status"] == "completed" and after["train"]["loss"] == before["train"]["loss"]
  assert after["train"].keys() == before["train"].keys()
  assert after["eval"]["ce"] == pytest.approx(before["eval"]["ce"], rel=1e-6)
