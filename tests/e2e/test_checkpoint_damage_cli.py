"""A damaged checkpoint in the programs: `python -m lime_jax.main` survives random bytes in the latest
state (moved aside, resumed from the newest intact step), `lime_jax.evaluate --step` on a damaged step
fails naming the file and the intact steps, and a misspelt --config field names the nearest valid one in
both binaries. One tiny run (checkpoints 20, 30, 40) is trained per module; each test damages a copy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.train import loop as train_lib
from tests.helpers.runs import REPO, assert_same_state, tiny_config
from tests.integration.test_checkpoint_damage import STEPS, as_saved_before_digests, checkpoint_dirs, copy_of


def random_bytes(step_dir):
  """Random bytes over the largest file of the state (an OCDBT data file)."""
  files = [os.path.join(r, f) for r, _, names in os.walk(step_dir / "state") for f in names]
  path = max(files, key=os.path.getsize)
  noise = os.urandom(os.path.getsize(path))
  with open(path, "wb") as f:
    f.write(noise)
  return os.path.relpath(path, step_dir), noise


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("damage") / "run"
  train_lib.train(tiny_config(**STEPS), str(workdir))
  assert ckpt_lib.Checkpointer(str(workdir)).all_steps() == [20, 30, 40]
  return workdir


def _run(args, timeout=300):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_"))}
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**env, "JAX_PLATFORMS": "cpu"},
  )


def test_main_binary_survives_random_bytes_in_the_latest_state(trained, tmp_path):
  """Without digests (a step saved before them), orbax's decode error is the damage."""
  workdir = copy_of(trained, tmp_path)
  as_saved_before_digests(workdir / "checkpoints" / "40")
  relpath, noise = random_bytes(workdir / "checkpoints" / "40")
  proc = _run(
    [
      "-m",
      "lime_jax.main",
      "--config=experiments/baseline.py:tiny",
      f"--workdir={workdir}",
      *[f"--config.train.{k}={v}" for k, v in STEPS.items()],
      "--config.train.async_checkpoint=False",
    ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if "is damaged" in l)
  assert line.startswith(f"Checkpoint step 40 is damaged ({workdir}/checkpoints/40/state: "), line
  assert "ZSTD" in line and f"moved it to {workdir}/checkpoints/40.corrupt" in line
  assert f"Resumed from {workdir}/checkpoints/30." in proc.stdout
  assert (workdir / "checkpoints" / "40.corrupt" / relpath).read_bytes() == noise  # moved, not deleted
  assert_same_state(workdir, trained, 40)


def test_evaluate_named_damaged_step_fails_naming_the_file_and_the_intact_steps(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  (workdir / "checkpoints" / "40" / "state" / "manifest.ocdbt").unlink()
  with pytest.raises(
    ckpt_lib.DamagedCheckpointError,
    match=r"step 40 in .* is damaged \(.*/40/state/manifest\.ocdbt \(missing\)\)\. "
    r"Intact steps: \[20, 30\]",
  ):
    ckpt_lib.restore_params(str(workdir), step=40)
  proc = _run(["-m", "lime_jax.evaluate", f"--workdir={workdir}", "--probes=entropy", "--step=40"])
  assert proc.returncode == 1
  assert "FATAL: Checkpoint step 40" in proc.stderr and "Intact steps: [20, 30]" in proc.stderr
  assert "Traceback" not in proc.stderr and "--probes=collapse,copying" not in proc.stderr  # no usage
  assert checkpoint_dirs(workdir) == ["20", "30", "40"]  # a named step is reported, not moved


@pytest.mark.parametrize(
  "binary,extra", [("main", ["--workdir=unused"]), ("evaluate", ["--workdir=unused", "--random_init"])]
)
def test_misspelt_field_fails_naming_it_in_both_binaries(binary, extra):
  proc = _run(
    [
      "-m",
      f"lime_jax.{binary}",
      "--config=experiments/baseline.py:tiny",
      *extra,
      "--config.train.num_step=5",
    ],
    timeout=120,
  )
  assert proc.returncode == 1
  assert (
    "FATAL Flags parsing error: --config.train.num_step: the config has no field 'train.num_step'. "
    "Did you mean --config.train.num_steps?"
  ) in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
