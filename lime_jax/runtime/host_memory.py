"""Transparent huge pages for the host allocations of XLA:CPU, by restarting an entry point once.

XLA:CPU allocates a compiled step's temporary buffers afresh at every execution, and glibc serves each
large one with a new mmap: on 4 KiB pages, their first touch costs one page fault per page, every step
(a 64-layer train step of the CPU benchmark faulted in its whole temp size, ~170k faults and 0.39 s of
kernel time per step at 8 layers: docs/benchmarks.md "Where a train step's time goes"). glibc's tunable
`glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask for transparent huge pages on those mappings
(kernel THP mode `madvise`), which cuts the faults ~500x. Tunables are read when a process starts, so an
entry point (`python -m lime_jax.main`, `lime_jax.evaluate`, ...) calls `restart_with_huge_pages()` first
thing: it re-executes the same command line once with the tunable added to `GLIBC_TUNABLES`.

Nothing happens where it cannot help (not Linux / glibc, glibc < 2.35, THP mode not `madvise`), where the
tunable is already set, or with `LIME_JAX_HUGE_PAGES=0`. Library users who import lime_jax in their own
program can get the same by starting it with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "LIME_JAX_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode() -> str:
  try:
    with open(_THP_MODE) as f:
      return f.read()
  except OSError:
    return ""


def restart_reason(env: Mapping[str, str], system: str, libc: tuple[str, str], thp_mode: str) -> str | None:
  """Why the process would not restart, or None when it should (pure: the caller passes the facts)."""
  if env.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  if "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"
  if system != "Linux" or libc[0] != "glibc":
    return f"not Linux with glibc ({system}, {libc[0] or 'unknown libc'})"
  try:
    version = tuple(int(p) for p in libc[1].split(".")[:2])
  except ValueError:
    return f"unknown glibc version {libc[1]!r}"
  if version < (2, 35):
    return f"glibc {libc[1]} has no glibc.malloc.hugetlb (needs 2.35)"
  if "[madvise]" not in thp_mode:
    return f"transparent huge pages not in mode madvise ({thp_mode.strip() or 'unavailable'})"
  return None


def huge_pages_env(env: Mapping[str, str]) -> dict[str, str] | None:
  """`env` with glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES where that helps on this host (see
  `restart_reason`), else None."""
  if restart_reason(env, platform.system(), platform.libc_ver(), _thp_mode()) is not None:
    return None
  out = dict(env)
  out["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
  return out


def restart_with_huge_pages() -> None:
  """Re-executes this process's command line with `GLIBC_TUNABLES` += glibc.malloc.hugetlb=1, once.

  Call it before anything else in an entry point's `__main__` (the same PID goes on, so signals,
  launchers and `jax.distributed` see one process)."""
  env = huge_pages_env(os.environ)
  argv = getattr(sys, "orig_argv", None)
  if env is None or not argv or len(argv) < 2:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
