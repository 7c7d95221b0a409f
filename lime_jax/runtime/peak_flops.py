"""The peak FLOP/s per device behind MFU: a data-sheet value, or a measured fp32 matmul on CPU.

The FLOP counts it divides are lime_jax/model/flops.py's.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from lime_jax.runtime import caches

# Dense bf16 peak FLOP/s per chip, from vendor data sheets.
_PEAK_BY_KIND = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
}


def measure_matmul_peak(n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of a jitted fp32 n x n matmul on the default device (the CPU 'peak' for MFU)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def _cpu_count() -> int:
  """CPUs this process may run on (its affinity mask under SLURM or a container), else all of them."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s per device, how it was obtained): a data-sheet value, or a measured matmul on CPU,
  measured once per (device kind, jax version, CPU count) and then read from the user cache dir."""
  kind = jax.devices()[0].device_kind
  for name, peak in _PEAK_BY_KIND.items():
    if name.lower() in kind.lower():
      return peak, f"data sheet ({kind})"
  key = f"{kind} | jax {jax.__version__} | {_cpu_count()} cpus | fp32 2048^2 matmul"
  peak, cached = caches.cached_value("cpu_peak_flops", key, measure_matmul_peak)
  return peak, f"measured fp32 matmul ({kind}{', cached' if cached else ''})"
