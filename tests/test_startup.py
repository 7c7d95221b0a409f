"""Start-up and throughput reporting: the persistent compilation cache, the cached CPU peak, start-up
phases in compile_report.json, tokens/s and MFU over training steps only, non-TTY progress lines."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.probes.runner import Progress
from lime_jax.runtime import caches
from lime_jax.train import loop as train_lib
from lime_jax.train import timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_compilation_cache_dir_setting(monkeypatch, tmp_path):
  monkeypatch.setenv("LIME_JAX_CACHE_DIR", str(tmp_path / "u"))
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert caches.resolve_compilation_cache_dir("") == str(tmp_path / "u" / "jax_cache")
  assert caches.resolve_compilation_cache_dir("none") is None
  assert caches.resolve_compilation_cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "j"))
  assert caches.resolve_compilation_cache_dir("") == str(tmp_path / "j")  # jax's own setting wins
  monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "false")
  assert caches.resolve_compilation_cache_dir("") is None
  assert caches.resolve_compilation_cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")  # explicit
  monkeypatch.delenv("JAX_ENABLE_COMPILATION_CACHE")
  monkeypatch.delenv("LIME_JAX_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert caches.user_cache_dir() == str(tmp_path / "xdg" / "lime_jax")
  before = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
  try:
    assert caches.setup_compilation_cache("none") is None
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update("jax_enable_compilation_cache", before[1])
    jax.config.update("jax_compilation_cache_dir", before[0])
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def test_bad_compilation_cache_dir_fails_early():
  config = _tiny_config()
  config.train.compilation_cache_dir = None
  with pytest.raises(ValueError, match=r"config\.train\.compilation_cache_dir=None is invalid.*'none'"):
    train_lib.build(config)


def test_cached_value_computes_once_and_survives_a_corrupt_file(monkeypatch, tmp_path):
  monkeypatch.setenv("LIME_JAX_CACHE_DIR", str(tmp_path))
  calls = []
  compute = lambda: calls.append(1) or 7.0
  assert caches.cached_value("peak", "cpu|8", compute) == (7.0, False)
  assert caches.cached_value("peak", "cpu|8", compute) == (7.0, True)
  assert caches.cached_value("peak", "cpu|4", compute) == (7.0, False)  # another key: measured again
  assert len(calls) == 2
  (tmp_path / "peak.json").write_text("{not json")
  assert caches.cached_value("peak", "cpu|8", compute) == (7.0, False)
  assert json.loads((tmp_path / "peak.json").read_text()) == {"cpu|8": 7.0}


def test_step_timer_leaves_out_excluded_time():
  now = [0.0]
  timer = timing.StepTimer(step=10, clock=lambda: now[0])
  now[0] += 2.0  # two steps of 1 s
  with timer.excluded():
    now[0] += 30.0  # a slow checkpoint
  now[0] += 2.0  # two more steps
  assert timer.steps_per_s(14) == pytest.approx(1.0)
  now[0] += 0.5
  assert timer.steps_per_s(15) == pytest.approx(2.0)  # a new interval, nothing excluded


def _tiny_config(**train_overrides):
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train_overrides)
  return config


def test_tokens_per_s_and_mfu_leave_out_checkpoint_and_eval_time(tmp_path, monkeypatch):
  """A 1.5 s checkpoint and a 1.5 s evaluation at step 2 do not lower the throughput of steps 3-4, and
  MFU is a percentage of the peak in compile_report.json."""
  save, evaluate = ckpt_lib.Checkpointer.save, train_lib.evaluate

  def slow_save(self, *args, **kwargs):
    time.sleep(1.5)
    return save(self, *args, **kwargs)

  def slow_evaluate(*args, **kwargs):
    time.sleep(1.5)
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", slow_save)
  monkeypatch.setattr(train_lib, "evaluate", slow_evaluate)
  config = _tiny_config(num_steps=4, checkpoint_every=2, log_every=2, eval_every=2)
  workdir = tmp_path / "run"
  train_lib.train(config, str(workdir))
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  step4 = next(r for r in records if r["split"] == "train" and r["step"] == 4)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  # Counting the 3 s of checkpoint and eval would give < 2 steps / 3 s.
  assert step4["tokens_per_s"] > 2 / 1.0 * tokens_per_step
  report = json.loads((workdir / "compile_report.json").read_text())
  steps_per_s = step4["tokens_per_s"] / tokens_per_step
  expected_pct = (
    100
    * steps_per_s
    * report["flops_per_step_analytic"]
    / (report["peak_flops_per_device"] * jax.device_count())
  )
  assert step4["mfu_pct"] == pytest.approx(expected_pct, rel=1e-6)
  assert "mfu" not in step4


class _Tty(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_progress_writes_plain_lines_when_not_a_tty():
  log = io.StringIO()  # a SLURM / tmux log file: not a TTY
  progress = Progress(["copying", "counting"], log)
  progress.next_probe("copying")
  progress.start("copying", 2)
  progress.advance("last n=8")
  progress.advance("last n=16")
  progress.finish()
  text = log.getvalue()
  assert "\r" not in text and text.endswith("\n")
  lines = text.splitlines()
  assert len(lines) == 4 and "2/2 last n=16" in lines[-1]
  tty = _Tty()
  progress = Progress(["copying"], tty)
  progress.next_probe("copying")
  progress.advance("x")
  progress.finish()
  assert tty.getvalue().count("\r") == 2 and tty.getvalue().count("\n") == 1


def test_fast_init_compile_draws_the_same_parameters():
  """The CPU init program compiled without LLVM optimisations gives the default compile's values up to
  float rounding (the same distributions and seeds)."""
  run = train_lib.build(_tiny_config())
  fast = train_lib.create_state(run)

  def init(rng):
    return train_lib.step_lib.init_train_state(train_lib.init_params(run.model_cfg, rng), run.optimizer)

  default = jax.jit(init, out_shardings=run.state_sharding)(jax.random.key(run.config.seed))
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
