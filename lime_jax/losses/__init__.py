"""Auxiliary losses on hidden representations.

Modules:
  seq_vcr   `seq_vcr_loss` (Seq-VCR, docs/methods.md §4 Eq. 3-4; per-position or batch+length covariance) and
            `aligned_positions` (the [T] mask of positions every example of a batch counts).
"""

from lime_jax.losses.seq_vcr import VARIANTS, aligned_positions, seq_vcr_loss

__all__ = ["VARIANTS", "aligned_positions", "seq_vcr_loss"]
