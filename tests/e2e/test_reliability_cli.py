"""Reliability of `python -m lime_jax.main` as a program: the lock of a killed run is recovered, and user
errors print one line (tracebacks only for bugs or with --traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lime_jax.runtime import workdir_lock
from tests.helpers.runs import REPO


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
