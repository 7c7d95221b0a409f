"""Start-up of `python -m lime_jax.main` run twice: the second run reads its executables from the
persistent compilation cache and the CPU peak from the user cache dir, and reports its start-up phases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _main(workdir, cache_dir) -> tuple[dict, str]:
  cmd = [
    sys.executable,
    "-m",
    "lime_jax.main",
    "--config=experiments/baseline.py:tiny",
    f"--workdir={workdir}",
    "--config.train.num_steps=2",
    "--config.model.num_layers=1",
  ]
  # Every compile is cached (no minimum time), so the counts below do not depend on the machine's speed.
  env = {
    **os.environ,
    "LIME_JAX_CACHE_DIR": str(cache_dir),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "compile_report.json").read_text()), proc.stdout


def test_second_run_hits_the_compilation_cache_and_the_cached_peak(tmp_path):
  """A repeat of the same run in a new process reads its executables from the persistent cache (jax's
  cache-hit events, not timings) and the CPU peak from the user cache dir; the phases are reported."""
  cache = tmp_path / "cache"
  first, out1 = _main(tmp_path / "a", cache)
  second, out2 = _main(tmp_path / "b", cache)
  assert first["compilation_cache"]["dir"] == str(cache / "jax_cache")
  assert first["compilation_cache"]["hits"] == 0 and first["compilation_cache"]["writes"] >= 2
  assert second["compilation_cache"]["hits"] >= 2  # parameter init and the train step
  assert any((cache / "jax_cache").iterdir())
  for name in ("imports_s", "build_s", "init_s", "restore_s", "compile_s", "peak_s", "first_step_s"):
    assert second["phases"][name] >= 0.0, name
  assert "Start-up: imports" in out2 and "compilation cache" in out2
  peaks = json.loads((cache / "cpu_peak_flops.json").read_text())
  assert list(peaks.values()) == [first["peak_flops_per_device"]]
  assert second["peak_flops_per_device"] == first["peak_flops_per_device"]  # read back, not re-measured
  assert "cached" in out2 and "cached" not in out1.split("MFU peak")[1].split("\n")[0]
