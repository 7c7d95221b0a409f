"""Losses and metrics: auxiliary losses on hidden representations, token-level metrics.

Modules:
  seq_vcr   `seq_vcr_loss` (Seq-VCR, docs/methods.md §4 Eq. 3-4; per-position or batch+length covariance) and
            `aligned_positions` (the [T] mask of positions every example of a batch counts).
  token_metrics   masked cross-entropy, token accuracy / exact match sums, perplexity and bits per byte
                  (pure functions).
"""

from lime_jax.losses.seq_vcr import VARIANTS, aligned_positions, seq_vcr_loss

__all__ = ["VARIANTS", "aligned_positions", "seq_vcr_loss"]
