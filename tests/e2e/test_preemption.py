"""Preemption: SIGTERM to a running `python -m lime_jax.main` checkpoints the current step and exits 0;
rerunning the same command resumes and ends with the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lime_jax import checkpoint as ckpt_lib
from tests.helpers.runs import assert_same_state

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
NUM_STEPS = 400  # long enough that the signal lands mid-run (tiny steps take a few ms each)
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
TIMEOUT_S = 240


def command(workdir) -> list[str]:
  return [
    sys.executable,
    "-m",
    "lime_jax.main",
    "--config=experiments/baseline.py:tiny",
    f"--workdir={workdir}",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1000",
    "--config.data.prefetch=0",
  ]


def start(workdir, log_path) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "LIME_", "JAX_"))}
  env.update(XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    command(workdir),
    cwd=REPO,
    env=env,
    stdout=open(log_path, "w"),
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )


def last_train_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if line.endswith("\n") and '"train"' in line]
  return max(steps, default=0)


def finish(proc: subprocess.Popen, timeout: float) -> int:
  try:
    return proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def final_metrics(workdir) -> dict:
  with open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8") as f:
    return json.load(f)


def log_text(path) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def log_tail(path) -> str:
  return log_text(path)[-3000:]


def test_sigterm_checkpoints_exits_zero_and_resumes_to_the_same_parameters(tmp_path):
  preempted, straight = tmp_path / "preempted", tmp_path / "straight"
  reference = start(straight, tmp_path / "straight.log")
  proc = start(preempted, tmp_path / "preempted.log")
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while last_train_step(preempted) < 3 and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert proc.poll() is None, log_tail(tmp_path / "preempted.log")
    proc.send_signal(signal.SIGTERM)
  finally:
    code = finish(proc, TIMEOUT_S)
  assert code == 0, log_tail(tmp_path / "preempted.log")
  stopped = final_metrics(preempted)
  assert stopped["status"] == "preempted", stopped
  step = stopped["step"]
  assert 3 <= step < NUM_STEPS
  assert ckpt_lib.Checkpointer(str(preempted)).all_steps() == [step]  # the interrupted step, nothing else
  assert f"Signal 15: checkpointed step {step}" in log_text(tmp_path / "preempted.log")

  resumed = start(preempted, tmp_path / "resumed.log")
  assert finish(resumed, TIMEOUT_S) == 0, log_tail(tmp_path / "resumed.log")
  assert f"Resumed from {preempted}/checkpoints/{step}" in log_text(tmp_path / "resumed.log")
  assert finish(reference, TIMEOUT_S) == 0, log_tail(tmp_path / "straight.log")
  done, ref = final_metrics(preempted), final_metrics(straight)
  assert done["status"] == ref["status"] == "completed" and done["step"] == NUM_STEPS
  assert done["train"]["loss"] == ref["train"]["loss"]
  assert_same_state(preempted, straight, NUM_STEPS)
