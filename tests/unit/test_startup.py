"""Start-up pieces: the compilation cache dir setting, cached values, the step timer and non-TTY progress
lines."""

from __future__ import annotations

import io
import json
import os
import sys

import jax
import pytest

from lime_jax.probes.runner import Progress
from lime_jax.runtime import caches
from lime_jax.train import loop as train_lib
from lime_jax.train import timing

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


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
