"""On-disk caches that make a repeated start cheap: jax's persistent compilation cache and the measured
CPU matmul peak used for MFU.

Both live under the user cache dir: `$LIME_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/lime_jax`, else
`~/.cache/lime_jax`. The compilation cache is trusted code: keep it in a directory only you can write.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator

import jax

DISABLED = "none"
# Compiles faster than this are not written to the cache (eager ops, tiny helpers); jax's default is 1 s,
# which a small model's parameter init or eval step can fall under on an idle machine.
_MIN_COMPILE_TIME_S = 0.2


def user_cache_dir() -> str:
  """The root of lime_jax's caches (see the module docstring)."""
  explicit = os.environ.get("LIME_JAX_CACHE_DIR")
  if explicit:
    return os.path.expanduser(explicit)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lime_jax")


def resolve_compilation_cache_dir(setting: str) -> str | None:
  """The directory `train.compilation_cache_dir = setting` means: None for 'none'; for '' None if
  JAX_ENABLE_COMPILATION_CACHE=false, else jax's own JAX_COMPILATION_CACHE_DIR if set, else
  `<user cache dir>/jax_cache`; any other value is the path."""
  if setting == DISABLED:
    return None
  if setting:
    return os.path.abspath(os.path.expanduser(setting)) if "://" not in setting else setting
  if os.environ.get("JAX_ENABLE_COMPILATION_CACHE", "").lower() in ("0", "false", "no", "off"):
    return None  # turned off for jax as a whole
  from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  return from_env or os.path.join(user_cache_dir(), "jax_cache")


def setup_compilation_cache(setting: str) -> str | None:
  """Points jax's persistent compilation cache at `setting`'s directory (or turns it off) before the
  first compile; returns the directory (None: off).

  jax reads the cache settings at the first compile of a process; when they change later (a second
  `train()` in one process), the cache is reset so that the new ones take effect.
  """
  path = resolve_compilation_cache_dir(setting)
  enabled = path is not None
  changed = bool(jax.config.jax_enable_compilation_cache) != enabled or (
    enabled and jax.config.jax_compilation_cache_dir != path
  )
  if enabled and "://" not in path:
    os.makedirs(path, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", enabled)
  if enabled:
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_TIME_S)
  if changed:
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
  return path


@contextlib.contextmanager
def count_cache_events() -> Iterator[dict[str, int]]:
  """Counts persistent-cache hits and writes (jax.monitoring events) inside the block:
  `with count_cache_events() as n: ...` then n['hits'], n['writes']."""
  counts = {"hits": 0, "writes": 0}
  names = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "writes"}

  def listener(event: str, **kwargs) -> None:
    del kwargs
    if event in names:
      counts[names[event]] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield counts
  finally:
    unregister = getattr(jax.monitoring, "unregister_event_listener", None)
    if unregister is not None:
      unregister(listener)


def cached_value(name: str, key: str, compute: Callable[[], float]) -> tuple[float, bool]:
  """(value, whether it came from the cache): `<user cache dir>/<name>.json` maps `key` to a number;
  a missing key is computed and stored. An unreadable or unwritable cache only costs the computation."""
  path = os.path.join(user_cache_dir(), f"{name}.json")
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
  except (OSError, ValueError):
    table = {}
  if isinstance(table, dict) and isinstance(table.get(key), (int, float)):
    return float(table[key]), True
  value = float(compute())
  table = table if isinstance(table, dict) else {}
  table[key] = value
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  except OSError:
    pass
  return value, False
