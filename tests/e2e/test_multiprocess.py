"""Multi-process training on one machine: 2 processes x 2 CPU devices, coordinated by
`jax.distributed.initialize` on localhost, against one process with 4 devices.

  - the 2-process run's per-step losses (and its held-out eval at the stop step) match the single
    process's;
  - its checkpoint, written cooperatively, is restored by ONE process on a different mesh, which trains
    on to the end and evaluates: final parameters, loss and eval match the straight single-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from lime_jax import checkpoint as ckpt_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
NUM_STEPS, STOP_AT = 6, 3
ARGS = (
  "--config=experiments/baseline.py:tiny",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=100",
  f"--config.train.eval_every={STOP_AT}",
  "--config.train.async_checkpoint=False",
  "--config.data.prefetch=0",
  "--config.train.compilation_cache_dir=none",
)  # every process compiles: no cache state shared
# Same cheap code generation in every run (the runs are compared with each other only).
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
TIMEOUT_S = 240


def free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env_for(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "LIME_", "JAX_"))}
  env.update(
    XLA_FLAGS=f"{XLA_FLAGS} --xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra
  )
  return env


def start_main(workdir, devices: int, *args: str, **env: str) -> subprocess.Popen:
  log = open(
    os.path.join(
      os.path.dirname(str(workdir)), f"{os.path.basename(str(workdir))}{env.get('LIME_PROCESS_ID', '')}.log"
    ),
    "w",
  )
  cmd = [sys.executable, "-m", "lime_jax.main", f"--workdir={workdir}", *ARGS, *args]
  return subprocess.Popen(
    cmd, cwd=REPO, env=env_for(devices, **env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
  )


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
  """Return codes; kills every process (its whole session) that is still running at the deadline."""
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def read_log(path) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-3000:]


def metrics(workdir, split: str) -> dict[int, dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r for r in records if r["split"] == split}


def test_two_processes_match_one_and_checkpoint_restores_in_one(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  port = free_port()
  dist = dict(LIME_COORDINATOR=f"localhost:{port}", LIME_NUM_PROCESSES="2")
  steps = f"--config.train.num_steps={NUM_STEPS}"
  stop = f"--config.train.stop_at_step={STOP_AT}"
  procs = [start_main(multi, 2, steps, stop, LIME_PROCESS_ID=str(i), **dist) for i in range(2)]
  procs.append(start_main(single, 4, steps))  # the reference: one process, 4 devices, straight to the end
  codes = wait_all(procs, TIMEOUT_S)
  logs = [tmp_path / "multi0.log", tmp_path / "multi1.log", tmp_path / "single.log"]
  assert codes == [0, 0, 0], "\n\n".join(read_log(l) for l in logs)

  ref_train, got_train = metrics(single, "train"), metrics(multi, "train")
  assert sorted(got_train) == list(range(1, STOP_AT + 1))  # only process 0 writes metrics, once per step
  for step in range(1, STOP_AT + 1):
    np.testing.assert_allclose(got_train[step]["loss"], ref_train[step]["loss"], rtol=0, atol=1e-5)
  ref_eval, got_eval = metrics(single, "eval"), metrics(multi, "eval")
  for key in ("ce", "exact_match", "token_accuracy", "examples"):
    np.testing.assert_allclose(got_eval[STOP_AT][key], ref_eval[STOP_AT][key], rtol=0, atol=1e-5)
  with open(multi / "final_metrics.json", encoding="utf-8") as f:
    assert json.load(f)["status"] == "stopped"
  assert ckpt_lib.Checkpointer(str(multi)).all_steps() == [STOP_AT]
  saved = sorted(f for f in os.listdir(multi / "checkpoints" / str(STOP_AT) / "data") if f.endswith(".json"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

  # One process, a different mesh (data 2 x tensor 2), restores the 2-process checkpoint and finishes.
  resume = start_main(multi, 4, steps, "--config.mesh.data=2", "--config.mesh.tensor=2")
  codes = wait_all([resume], TIMEOUT_S)
  assert codes == [0], read_log(tmp_path / "multi.log")
  assert "Resumed from" in read_log(tmp_path / "multi.log")
  with open(multi / "final_metrics.json", encoding="utf-8") as f:
    got = json.load(f)
  with open(single / "final_metrics.json", encoding="utf-8") as f:
    ref = json.load(f)
  assert got["status"] == "completed" and got["step"] == NUM_STEPS
  np.testing.assert_allclose(got["train"]["loss"], ref["train"]["loss"], rtol=0, atol=1e-5)
  for key in ("ce", "exact_match", "token_accuracy"):
    np.testing.assert_allclose(got["eval"][key], ref["eval"][key], rtol=0, atol=1e-5)
  _, state_got = ckpt_lib.restore_raw_state(str(multi), NUM_STEPS)
  _, state_ref = ckpt_lib.restore_raw_state(str(single), NUM_STEPS)
  flat_got = dict(_flatten(state_got["params"]))
  for name, ref_value in _flatten(state_ref["params"]):
    np.testing.assert_allclose(flat_got[name], ref_value, rtol=0, atol=1e-5, err_msg=name)


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)


def test_sigterm_to_one_process_stops_all_at_one_checkpointed_step(tmp_path):
  """jax's preemption service: SIGTERM to process 1 only; both processes stop at the same step, write
  one checkpoint together and exit 0."""
  workdir = tmp_path / "multi"
  dist = dict(LIME_COORDINATOR=f"localhost:{free_port()}", LIME_NUM_PROCESSES="2")
  procs = [
    start_main(workdir, 2, "--config.train.num_steps=400", LIME_PROCESS_ID=str(i), **dist) for i in range(2)
  ]
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while (
      (not os.path.exists(workdir / "metrics.jsonl") or max(metrics(workdir, "train"), default=0) < 3)
      and all(p.poll() is None for p in procs)
      and time.monotonic() < deadline
    ):
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), read_log(tmp_path / "multi0.log")
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes = wait_all(procs, TIMEOUT_S)
  logs = [read_log(tmp_path / f"multi{i}.log") for i in range(2)]
  assert codes == [0, 0], "\n\n".join(logs)
  with open(workdir / "final_metrics.json", encoding="utf-8") as f:
    final = json.load(f)
  assert final["status"] == "preempted" and 3 <= final["step"] < 400, final
  assert ckpt_lib.Checkpointer(str(workdir)).all_steps() == [final["step"]]
  assert f"Signal 15: checkpointed step {final['step']}" in logs[0]


def test_a_locked_workdir_stops_every_process_and_digests_are_checked_by_all(tmp_path):
  """Process 0 takes the workdir lock for all; when another run holds it, every process fails at once
  (process 0 naming the holder) instead of waiting in a collective. Unlocked, two processes train, and on
  resume split the digests of a damaged step between them and agree to move it aside."""
  from lime_jax.runtime import workdir_lock  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / "multi"
  workdir.mkdir()
  dist = dict(LIME_COORDINATOR=f"localhost:{free_port()}", LIME_NUM_PROCESSES="2")

  def both(*args: str) -> tuple[list[int], list[str]]:
    procs = [start_main(workdir, 2, *args, LIME_PROCESS_ID=str(i), **dist) for i in range(2)]
    codes = wait_all(procs, TIMEOUT_S)
    return codes, [read_log(tmp_path / f"multi{i}.log") for i in range(2)]

  with workdir_lock.held(str(workdir)):
    codes, logs = both("--config.train.num_steps=2")
  assert codes == [1, 1], "\n\n".join(logs)
  assert f"is in use by another training run: pid {os.getpid()}" in logs[0]
  assert "process 0 could not lock --workdir" in logs[1]
  assert not (workdir / "checkpoints").exists()

  codes, logs = both("--config.train.num_steps=2", "--config.train.checkpoint_every=1")
  assert codes == [0, 0], "\n\n".join(logs)
  data = workdir / "checkpoints" / "2" / "state" / "ocdbt.process_1" / "d"
  target = max(data.iterdir(), key=lambda p: p.stat().st_size)
  blob = bytearray(target.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  target.write_bytes(bytes(blob))
  codes, logs = both("--config.train.num_steps=3", "--config.train.checkpoint_every=1")
  assert codes == [0, 0], "\n\n".join(logs)
  assert f"Checkpoint step 2 is damaged ({target} (sha256 differs" in logs[0]
  assert f"Resumed from {workdir}/checkpoints/1." in logs[0]
  assert ckpt_lib.Checkpointer(str(workdir)).all_steps() == [1, 2, 3]
