"""Probes with parameters sharded over the mesh give the replicated run's results:

- one process, 8 fake CPU devices (tests/helpers/sharded_probe_worker.py): every probe (copying,
  counting, collapse, oversquash, entropy, separability on an HF folder; lm, router, entropy on a LIMe
  text run), the inspect API and the harness backend, on fsdp=8 and fsdp=2 x tensor=4 meshes;
- two processes (jax.distributed on localhost, 4 devices each): `python -m lime_jax.evaluate --hf
  --mesh_fsdp=8` writes (process 0) the results of the one-process replicated run.

Equal means: every number within 2e-4 (fp32 rounding of sums taken in another order; the collapse
distances of identical prompts are rounding noise of ~1e-5), every string, integer and flag the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers.compare_results import differences

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
WORKER = os.path.join(REPO, "tests", "helpers", "sharded_probe_worker.py")
HF_PROBES = "copying,counting,collapse,oversquash,entropy,separability"
# The worker's OPTIONS as flags.
FLAGS = (
  "--lengths=3",
  "--num_examples=4",
  "--collapse_ns=1,2,6",
  "--collapse_dtypes=float32",
  "--oversquash_length=8",
)
TOLERANCE = 2e-4
TIMEOUT_S = 900


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "LIME_", "JAX_PLATFORMS"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
  return env


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict, str]:
  work = tmp_path_factory.mktemp("sharded_probes")
  out = work / "report.json"
  proc = subprocess.run(
    [sys.executable, WORKER, str(out), str(work)],
    cwd=REPO,
    env=_env(8),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text()), str(work)


def test_every_probe_inspect_and_the_harness_equal_the_replicated_run(single):
  report, _ = single
  assert report["probes"]["hf"] == sorted(HF_PROBES.split(","))
  assert report["probes"]["lime"] == ["entropy", "lm", "router"]
  assert set(report["meshes"]) == {"fsdp8", "fsdp2_tensor4"}
  for name, r in report["meshes"].items():
    assert r["wq_spec"] == ("P(None, 'fsdp')" if name == "fsdp8" else "P(None, 'fsdp', 'tensor')")
    assert r["probes_numeric"] <= TOLERANCE and r["probes_discrete"] == [], (name, r)
    assert max(r["inspect"].values()) <= 1e-4, (name, r["inspect"])
    assert r["harness_loglikelihood"] <= 1e-4 and r["harness_same_greedy"] and r["harness_same_generated"], (
      name
    )


def _free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_write_the_results_of_one(single, tmp_path):
  _, work = single
  out = tmp_path / "two"
  dist = dict(LIME_COORDINATOR=f"localhost:{_free_port()}", LIME_NUM_PROCESSES="2")
  cmd = [
    sys.executable,
    "-m",
    "lime_jax.evaluate",
    f"--hf={work}/llama",
    f"--out={out}",
    f"--probes={HF_PROBES}",
    "--mesh_fsdp=8",
    *FLAGS,
  ]
  procs = [
    subprocess.Popen(
      cmd,
      cwd=REPO,
      env=_env(4, LIME_PROCESS_ID=str(i), **dist),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
    )
    for i in range(2)
  ]
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, 9)
  assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
  assert "per device" in logs[0] and "on mesh data=1 fsdp=8 tensor=1 (8 devices, 2 processes)" in logs[0]
  assert "Wrote" in logs[0] and "Wrote" not in logs[1]  # process 0 reports and writes
  got = json.loads((out / "results.json").read_text())
  with open(os.path.join(work, "out_replicated", "results.json")) as f:
    want = json.load(f)
  assert got["options"] == want["options"]
  numeric, discrete = differences(want["probes"], got["probes"])
  assert numeric <= TOLERANCE and discrete == [], (numeric, discrete)
