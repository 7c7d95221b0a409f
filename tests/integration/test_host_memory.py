"""An entry point restarts itself once, as the same process, with the huge-page tunable
(lime_jax/runtime/host_memory.py); `LIME_JAX_HUGE_PAGES=0` keeps the environment as it was."""

import os
import platform
import subprocess
import sys

import pytest

from lime_jax.runtime import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(env_extra: dict[str, str]) -> tuple[int, int, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  env.update(env_extra)
  proc = subprocess.Popen(
    [sys.executable, "-m", "tests.helpers.print_tunables"],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    text=True,
  )
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0
  pid, _, tunables = out.strip().partition(" ")
  return proc.pid, int(pid), tunables


def test_restarts_once_with_the_tunable_in_the_same_process():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  reason = host_memory.restart_reason(env, platform.system(), platform.libc_ver(), host_memory._thp_mode())
  if reason is not None:
    pytest.skip(f"this host would not restart: {reason}")
  spawned, reported, tunables = _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
  assert reported == spawned  # exec, not a child process
  assert tunables == "glibc.malloc.arena_max=4:" + host_memory.TUNABLE
  assert _run({host_memory.OPT_OUT: "0"})[2] == ""
