"""Seq-VCR: sequential variance-covariance regularisation (Seq-VCR paper §3.4, Eq. 3-4; docs/methods.md §4).

For features X in R^{N x T x d} (N batch samples, T positions, d features), the per-position
covariance across the batch is (unbiased)

  C_i = 1/(N-1) sum_j (X_{j,i} - mean_i)(X_{j,i} - mean_i)^T

and the loss is

  L = 1/(T d) sum_i sum_k [ lambda1 * max(0, 1 - sqrt(C_{i,kk} + eta))
                           + lambda2 * sum_{k' != k} C_{i,kk'}^2 ].

Variants:
  'per_position'  Eq. 3-4 as written: one covariance per counted position i; T = number of counted
                  positions.
  'batch_length'  (App. F/H) all counted N*T vectors pooled into ONE covariance (M = their number,
                  unbiased with M-1); normalised by d, i.e. Eq. 3-4 with a single "position". On a
                  one-position input both variants agree.

Sum of squared off-diagonal covariances, without a T x d x d tensor: with Xc the centred samples,
sum_{k,k'} C_kk'^2 = ||Xc^T Xc||_F^2 / (N-1)^2 = ||Xc Xc^T||_F^2 / (N-1)^2, so the d x d covariance
can be replaced by the N x N Gram matrix; the diagonal sum_k C_kk^2 (from the per-feature
variances) is subtracted. Each variant uses whichever of the two squares is smaller (static shapes):
  'per_position'  the [T, N, N] Gram when N <= d (the usual case: small batch, wide projection),
                  else the [T, d, d] covariances;
  'batch_length'  the [NT, NT] Gram when N*T <= d, else the [d, d] covariance (the usual case).
The d x d branches drop the diagonal with a mask instead of a subtraction (no cancellation).

Position mask semantics:
  'per_position'  mask_T: [T], positions counted for the whole batch. A per-example [N, T] mask would
                  give each position its own sample count (and padded rows would enter the
                  covariance), so it is refused; reduce it with `aligned_positions(mask_NT)` (the
                  positions every example counts) first.
  'batch_length'  mask: [T] (broadcast over the batch) or [N, T] (per example; each counted vector
                  enters the pooled covariance once).
Masked-out entries of x are zeroed before use, so garbage (even inf/NaN) there cannot leak in.

Degenerate inputs: N = 1 raises ValueError (a covariance across one sample is undefined). No counted
position ('per_position') or fewer than two counted vectors ('batch_length') give a loss of exactly 0.
All-identical rows give the finite value lambda1 * (1 - sqrt(eta)) with a zero, finite gradient
(eta > 0 is required: sqrt'(0) would be infinite).

Sharding: the function is written with plain jnp reductions over the batch axis, so under `jax.jit`
with the batch sharded over a mesh axis XLA inserts the cross-device reductions and the value does not
depend on the number of devices. It expects the global batch (jit / GSPMD); inside `shard_map` the
reductions over N would only see the local shard.

All arithmetic is fp32 with full-precision matmuls (no TF32/bf16 passes), whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# config.model.seq_vcr.variant (model_config.SeqVcrConfig reads its choices from here).
VARIANTS = ("per_position", "batch_length")

_HIGHEST = jax.lax.Precision.HIGHEST


def aligned_positions(mask_NT: jax.Array) -> jax.Array:
  """[T] float mask of the positions counted by every example of the batch (min over N)."""
  return jnp.min((jnp.asarray(mask_NT) != 0).astype(jnp.float32), axis=0)


def _check_args(x_NTD: jax.Array, lambda1: float, lambda2: float, eta: float, variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"seq_vcr variant={variant!r} is unknown; use one of {VARIANTS}.")
  if x_NTD.ndim != 3:
    raise ValueError(f"seq_vcr expects features [N, T, d]; got shape {x_NTD.shape}.")
  if x_NTD.shape[0] < 2:
    raise ValueError(
      f"seq_vcr needs a batch of at least 2 samples (the covariance is taken across "
      f"the batch and is undefined for N=1); got N={x_NTD.shape[0]}. Raise the batch "
      "size or disable Seq-VCR."
    )
  if not float(eta) > 0.0:
    raise ValueError(
      f"seq_vcr eta={eta} must be > 0 (it keeps sqrt(C_kk + eta) differentiable at "
      "zero variance); the paper uses 1e-3."
    )
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
    if isinstance(value, (int, float)) and value < 0:
      raise ValueError(f"seq_vcr {name}={value} must be >= 0.")


def _sum_sq_offdiag_per_position(xc_TND: jax.Array, var_TD: jax.Array, denom: float) -> jax.Array:
  """[T] sum_{k != k'} C_{i,kk'}^2 per position, via the smaller of the N x N and d x d squares."""
  _, n, d = xc_TND.shape
  if n <= d:
    gram_TNN = jnp.einsum("tnd,tmd->tnm", xc_TND, xc_TND, precision=_HIGHEST)
    total_T = jnp.sum(jnp.square(gram_TNN), axis=(1, 2)) / (denom * denom)
    return jnp.maximum(total_T - jnp.sum(jnp.square(var_TD), axis=1), 0.0)
  cov_TDD = jnp.einsum("tnd,tne->tde", xc_TND, xc_TND, precision=_HIGHEST) / denom
  offdiag_DD = 1.0 - jnp.eye(d, dtype=jnp.float32)
  return jnp.sum(jnp.square(cov_TDD) * offdiag_DD[None], axis=(1, 2))


def _per_position(x_NTD: jax.Array, mask_T: jax.Array | None, eta: float) -> tuple[jax.Array, jax.Array]:
  """Unweighted (variance, covariance) sums of Eq. 3-4, each divided by T*d."""
  n, t, d = x_NTD.shape
  if mask_T is None:
    m_T = jnp.ones((t,), jnp.float32)
  else:
    mask_T = jnp.asarray(mask_T)
    if mask_T.shape != (t,):
      raise ValueError(
        f"seq_vcr variant='per_position' takes a position mask of shape [T]=({t},); got "
        f"{mask_T.shape}. A per-example [N, T] mask would give positions different sample counts: "
        "reduce it with aligned_positions(mask_NT), or use variant='batch_length'."
      )
    m_T = (mask_T != 0).astype(jnp.float32)
  # Position-major layout, and the reductions over the batch written as dots with a vector: XLA:CPU
  # runs a reduction over the leading batch axis (and the Gram on [N, T, d]) several times slower.
  x_TND = jnp.transpose(jnp.where(m_T[None, :, None] > 0, x_NTD, 0.0), (1, 0, 2))
  mean_TD = jnp.einsum("n,tnd->td", jnp.full((n,), 1.0 / n, jnp.float32), x_TND, precision=_HIGHEST)
  xc_TND = x_TND - mean_TD[:, None, :]
  denom = float(n - 1)
  var_TD = (
    jnp.einsum("n,tnd->td", jnp.ones((n,), jnp.float32), jnp.square(xc_TND), precision=_HIGHEST) / denom
  )
  hinge_T = jnp.sum(jax.nn.relu(1.0 - jnp.sqrt(var_TD + eta)), axis=1)
  offdiag_T = _sum_sq_offdiag_per_position(xc_TND, var_TD, denom)
  scale = 1.0 / (jnp.maximum(jnp.sum(m_T), 1.0) * d)
  return jnp.sum(m_T * hinge_T) * scale, jnp.sum(m_T * offdiag_T) * scale


def _batch_length(x_NTD: jax.Array, mask: jax.Array | None, eta: float) -> tuple[jax.Array, jax.Array]:
  """Unweighted (variance, covariance) sums of one covariance over all counted vectors, over d."""
  n, t, d = x_NTD.shape
  if mask is None:
    m_NT = jnp.ones((n, t), jnp.float32)
  else:
    mask = jnp.asarray(mask)
    if mask.shape == (t,):
      m_NT = jnp.broadcast_to((mask != 0).astype(jnp.float32)[None, :], (n, t))
    elif mask.shape == (n, t):
      m_NT = (mask != 0).astype(jnp.float32)
    else:
      raise ValueError(
        f"seq_vcr variant='batch_length' takes a mask of shape [T]=({t},) or "
        f"[N, T]=({n}, {t}); got {mask.shape}."
      )
  x_MD = jnp.where(m_NT[:, :, None] > 0, x_NTD, 0.0).reshape(n * t, d)
  m_M = m_NT.reshape(n * t)
  count = jnp.sum(m_M)
  # Batch reductions as dots (see _per_position).
  mean_D = jnp.einsum("m,md->d", m_M, x_MD, precision=_HIGHEST) / jnp.maximum(count, 1.0)
  xc_MD = (x_MD - mean_D[None, :]) * m_M[:, None]
  denom = jnp.maximum(count - 1.0, 1.0)
  var_D = jnp.einsum("m,md->d", m_M, jnp.square(xc_MD), precision=_HIGHEST) / denom
  hinge = jnp.sum(jax.nn.relu(1.0 - jnp.sqrt(var_D + eta)))
  if n * t <= d:
    gram_MM = jnp.einsum("md,nd->mn", xc_MD, xc_MD, precision=_HIGHEST)
    offdiag = jnp.maximum(jnp.sum(jnp.square(gram_MM)) / (denom * denom) - jnp.sum(jnp.square(var_D)), 0.0)
  else:
    cov_DD = jnp.einsum("md,me->de", xc_MD, xc_MD, precision=_HIGHEST) / denom
    offdiag = jnp.sum(jnp.square(cov_DD) * (1.0 - jnp.eye(d, dtype=jnp.float32)))
  valid = (count >= 2.0).astype(jnp.float32)  # fewer than 2 vectors: no covariance, loss 0.
  return valid * hinge / d, valid * offdiag / d


def seq_vcr_loss(
  x_NTD: jax.Array,
  mask: jax.Array | None = None,
  *,
  lambda1: float,
  lambda2: float,
  eta: float = 1e-3,
  variant: str = "per_position",
) -> dict[str, jax.Array]:
  """Seq-VCR loss of features x_NTD (docs/methods.md §4 Eq. 3-4); fp32 scalars.

  Args:
    x_NTD: features [N, T, d] (any float dtype; computed in fp32). N >= 2.
    mask: None (all positions), [T] positions counted for the whole batch, or ([N, T], only for
      'batch_length') vectors counted per example. Non-zero entries count.
    lambda1: weight of the variance hinge sum_k max(0, 1 - sqrt(C_kk + eta)).
    lambda2: weight of the off-diagonal covariance sum_{k != k'} C_kk'^2.
    eta: added inside the sqrt; must be > 0.
    variant: 'per_position' (Eq. 3-4) or 'batch_length' (one covariance over all counted vectors).

  Returns:
    {'loss': variance + covariance, 'variance': the weighted hinge term, 'covariance': the weighted
    off-diagonal term}, each already divided by T*d ('per_position') or d ('batch_length').
  """
  x_NTD = jnp.asarray(x_NTD)
  _check_args(x_NTD, lambda1, lambda2, eta, variant)
  x_NTD = x_NTD.astype(jnp.float32)
  if variant == "per_position":
    variance, covariance = _per_position(x_NTD, mask, float(eta))
  else:
    variance, covariance = _batch_length(x_NTD, mask, float(eta))
  variance = lambda1 * variance
  covariance = lambda2 * covariance
  return {"loss": variance + covariance, "variance": variance, "covariance": covariance}
