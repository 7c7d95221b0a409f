"""Analytic FLOP counts of a model (the numerator of MFU; the peak FLOP/s is lime_jax/runtime/peak_flops.py).

Convention (stated in logs and docs): training FLOPs per token = 3 x forward (forward + 2x backward).
Forward FLOPs per token = 2 x (parameters in matmuls, including the unembedding, excluding the
embedding lookup) + causal attention 2 x 2 x L x D_attn x T / 2 (QK^T and PV, halved for the causal mask),
+ the topology's `extra_flops` (e.g. LIMe's mixing). Remat recomputation is not counted (MFU, not HFU).
"""

from __future__ import annotations

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
