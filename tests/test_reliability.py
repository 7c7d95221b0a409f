"""Reliability of a run as a whole: the workdir lock, one-line user errors from `main` (tracebacks only for
bugs or with --traceback), finite config values, the NaN message, and the per-segment config records.
(Checkpoint digests and data-position checks: test_checkpoint_damage.py; bad shards: test_corpus.py;
the end-to-end table: benchmarks/reliability.py.)"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from test_train import REPO, tiny_config

from lime_jax import checkpoint
from lime_jax import config as config_lib
from lime_jax.runtime import cli, errors, workdir_lock
from lime_jax.train import loop as train_lib


def _main(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_"))}
  return subprocess.run(
    [sys.executable, "-m", "lime_jax.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**env, "JAX_PLATFORMS": "cpu"},
  )


# ----------------------------------------------------------------------------------------------- lock
def test_a_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  with workdir_lock.held(str(tmp_path)):
    with pytest.raises(
      workdir_lock.WorkdirLockedError, match=rf"in use by another training run: pid {os.getpid()} on host "
    ):
      train_lib.train(tiny_config(num_steps=2), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["lock.json"]  # the refused run wrote nothing
  assert (tmp_path / "lock.json").read_text() == ""  # released


def test_the_lock_of_a_killed_run_is_recovered(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from lime_jax.runtime import workdir_lock; workdir_lock.acquire(sys.argv[1]); "
      "print('locked', flush=True); time.sleep(600)",
      str(tmp_path),
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(
      workdir_lock.WorkdirLockedError, match=rf"pid {holder.pid} on host .*kill {holder.pid}"
    ):
      workdir_lock.acquire(str(tmp_path))
  finally:
    holder.kill()  # SIGKILL: no clean-up runs in the holder
    holder.wait()
  lines: list[str] = []
  lock = workdir_lock.acquire(str(tmp_path), log=lines.append)
  assert len(lines) == 1 and f"no longer running (pid {holder.pid} on host" in lines[0]
  assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
  lock.release()


def test_without_flock_a_holder_is_stale_once_its_heartbeat_stops(tmp_path):
  """The gs:// scheme (no locks): a fresh heartbeat refuses, an old one is taken over."""
  path = tmp_path / "lock.json"
  other = {"host": "other-host", "pid": 123, "started": "earlier", "heartbeat": time.time(), "token": "x"}
  path.write_text(json.dumps(other))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 123 on host other-host"):
    workdir_lock._acquire_url(str(tmp_path), "mine", print)
  path.write_text(json.dumps({**other, "heartbeat": time.time() - workdir_lock.STALE_AFTER_S - 1}))
  lines: list[str] = []
  lock = workdir_lock._acquire_url(str(tmp_path), "mine", lines.append)
  assert lines[0].startswith("Took over the stale lock of pid 123 on host other-host")
  assert json.loads(path.read_text())["token"] == "mine"
  lock.release()
  assert not path.exists()


# ---------------------------------------------------------------------------- config records, evaluate
def test_each_segment_keeps_its_config_and_evaluate_reads_a_locked_workdir(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  first = tiny_config(num_steps=4, checkpoint_every=2)
  train_lib.train(first, workdir)
  read = lambda name: json.loads((tmp_path / "run" / name).read_text())["train"]["learning_rate"]
  assert read("config.0.json") == read("config.json") == first.train.learning_rate
  again = tiny_config(num_steps=4, checkpoint_every=2)
  again.train.learning_rate = 2e-3
  capsys.readouterr()
  train_lib.train(again, workdir)  # the finished run started again with another learning rate
  assert (read("config.0.json"), read("config.4.json"), read("config.json")) == (
    first.train.learning_rate,
    2e-3,
    2e-3,
  )
  assert f"train.learning_rate: {first.train.learning_rate!r} -> 0.002" in capsys.readouterr().out

  for name in ("config.0.json", "config.4.json"):  # a workdir from before these records
    (tmp_path / "run" / name).unlink()
  train_lib.train(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  assert read("config.before-4.json") == 2e-3 and read("config.4.json") == first.train.learning_rate

  with workdir_lock.held(workdir):
    step = checkpoint.restore_params(workdir).step
  assert step == 4


# ----------------------------------------------------------------------------------------- config, NaN
@pytest.mark.parametrize(
  "field,value",
  [("train.learning_rate", float("nan")), ("train.b2", float("inf")), ("model.rope_theta", float("-inf"))],
)
def test_non_finite_config_values_fail_naming_the_field(field, value):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(
    errors.ConfigError, match=rf"config\.{field}={value!r} is invalid: must be a finite number"
  ):
    config_lib.validate(config)


def test_the_nan_message_names_the_real_last_good_step_and_the_likely_causes(tmp_path):
  config = tiny_config(num_steps=12, checkpoint_every=100, warmup_steps=0, grad_clip=0.0)
  config.train.learning_rate = 1e38
  with pytest.raises(train_lib.NonFiniteLossError) as caught:
    train_lib.train(config, str(tmp_path / "nan"))
  message = str(caught.value)
  assert "step None" not in message and "No checkpoint was written yet" in message
  assert "Likely causes, most likely first: (1) the learning rate is too high" in message
  resumed = train_lib.non_finite_message(
    31, {"loss": float("nan"), "grad_norm": 1.0}, 30, 30, "/ckpt", config
  )
  assert "The last good checkpoint is step 30 in /ckpt" in resumed and "(1) step 30, just restored" in resumed


# ------------------------------------------------------------------------------------------ main errors
def test_describe_sorts_user_errors_from_bugs():
  def raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
      try:
        raise inner
      except Exception as e:
        raise outer from e
    except Exception as e:
      return e

  full = raised_from(
    ValueError("orbax save failed"), OSError(errno.ENOSPC, "No space left on device", "/w/x")
  )
  assert errors.describe(full).startswith(
    "disk full: [Errno 28] No space left on device: '/w/x'. Fix: free space"
  )
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "/w/m": Failed to write: No space left on device'
  )
  assert errors.describe(tensorstore).startswith("disk full: RESOURCE_EXHAUSTED")
  assert errors.describe(OSError(errno.EROFS, "Read-only file system")).startswith("read-only workdir")
  assert (
    errors.describe(ValueError("config.data.seq_len=3 is too short")) == "config.data.seq_len=3 is too short"
  )
  assert errors.describe(ValueError("operands could not be broadcast together")) is None  # a bug
  assert errors.describe(KeyError("params")) is None


def test_logged_tracebacks_are_cut_to_one_line_and_exit_echoes_dropped():
  keep = logging.LogRecord("orbax", logging.ERROR, "f.py", 1, "save failed", (), None)
  try:
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device\n[tensorstore_spec ...]")
  except ValueError:
    keep.exc_info = sys.exc_info()
  assert cli._NoTraceback().filter(keep) and keep.exc_info is None
  assert keep.getMessage() == "save failed [ValueError: RESOURCE_EXHAUSTED: No space left on device]"
  echo = logging.LogRecord(
    "asyncio", logging.ERROR, "b.py", 1, "Task exception was never retrieved\n", (), None
  )
  assert not cli._NoTraceback().filter(echo)


def test_main_prints_one_line_for_user_errors_and_keeps_tracebacks_for_bugs_or_on_request(tmp_path):
  base = ["--config=experiments/baseline.py:tiny", f"--workdir={tmp_path / 'run'}"]
  proc = _main(base + ["--config.train.learning_rate=nan"])
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
    "FATAL: config.train.learning_rate=nan is invalid: must be a finite number (NaN and Inf are refused)."
  ], proc.stderr[-2000:]
  proc = _main(base + ["--config.train.learning_rate=nan", "--traceback"])
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr

  proc = _main(["--config=experiments/nope.py:tiny", base[1]])
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "there is no file 'experiments/nope.py'. Experiment files: experiments/baseline.py, " in proc.stderr
  proc = _main(["--config=experiments/baseline.py:tinny", base[1]])
  assert (
    proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  )
  assert (
    "Unknown preset 'tinny' for experiments/baseline.py; known presets: default, paper, tiny" in proc.stderr
  )

  (tmp_path / "run").mkdir()
  with workdir_lock.held(str(tmp_path / "run")):
    proc = _main(base)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert (
    f"FATAL: --workdir {tmp_path / 'run'} is in use by another training run: pid {os.getpid()}" in proc.stderr
  )

  proc = _main(
    base
    + ["--config.train.learning_rate=1e38", "--config.train.warmup_steps=0", "--config.train.grad_clip=0"]
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("FATAL: Non-finite loss/grad at step ")
