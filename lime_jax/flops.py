"""Analytic FLOP counts and the peak FLOP/s used for MFU.

Convention (stated in logs and docs): training FLOPs per token = 3 x forward (forward + 2x backward).
Forward FLOPs per token = 2 x (parameters in matmuls, including the unembedding, excluding the
embedding lookup) + causal attention 2 x 2 x L x D_attn x T / 2 (QK^T and PV, halved for the causal mask),
+ the topology's `extra_flops` (e.g. LIMe's mixing). Remat recomputation is not counted (MFU, not HFU).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from lime_jax import caches
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.topologies import get_topology


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in matmuls per token (no embedding lookup, no norms)."""
  D, F, N, R, H, L = cfg.d_model, cfg.ffn_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
  per_layer = D * N * H + D * R * 2 * H + N * H * D + (3 if cfg.mlp_gated else 2) * D * F
  return L * per_layer + D * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of the plain backbone (see module docstring)."""
  # A sliding window caps the keys each query sees (per windowed layer).
  windowed = (cfg.num_layers - len(cfg.global_layers)) if cfg.sliding_window else 0
  keys = (cfg.num_layers - windowed) * seq_len / 2 + windowed * _mean_keys(seq_len, cfg.sliding_window)
  attention = 2 * 2 * cfg.num_heads * cfg.head_dim * keys
  return 2.0 * matmul_params(cfg) + attention + topology_extra_forward_flops(cfg)


def _mean_keys(seq_len: int, window: int) -> float:
  """Mean keys per query under a causal sliding window (seq_len / 2 with no window)."""
  if window <= 0 or window >= seq_len:
    return seq_len / 2
  return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def topology_extra_forward_flops(cfg: ModelConfig) -> float:
  """Per-token forward FLOPs a topology adds on top of the backbone: its `Topology.extra_flops` (LIMe:
  its router's mixing), 0 without one ('plain')."""
  extra_flops = get_topology(cfg.topology).extra_flops
  return 0.0 if extra_flops is None else float(extra_flops(cfg))


def train_flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
  return 3.0 * forward_flops_per_token(cfg, seq_len) * batch_size * seq_len


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
