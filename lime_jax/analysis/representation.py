"""Representation metrics: one definition each, numpy float64, over a matrix Z [N, D] of N samples or
tokens with D features. The probes (lime_jax/probes/entropy.py) import them from here.

  matrix_entropy    Renyi-alpha entropy of the trace-normalised Gram spectrum (Seq-VCR Eq. 2; LIMe
                    `src/analysis/entropy.py`; Skean et al. 2025 prompt entropy), conventions 'lime',
                    'skean', 'none'
  effective_rank    exp(Shannon entropy of sigma_k / sum sigma) (Roy & Vetterli 2007)
  rankme            the same with p_k = sigma_k / sum sigma + eps (Garrido et al. 2023)
  anisotropy        mean cosine similarity over distinct pairs of rows
  paired_cosine     cos(a_i, b_i) row by row (the probes' adjacent-layer cosine)
  twonn_dimension   TwoNN intrinsic dimension (Facco et al. 2017)
  per_layer         any of them over a stack [L, N, D] -> [L]

Pure functions of numpy arrays; this module imports nothing of lime_jax and nothing of jax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

CONVENTIONS = ("lime", "skean", "none")
TWONN_ESTIMATORS = ("fit", "mle")
_EPS = 1e-12  # Probabilities, norms and traces below it count as zero.


def _matrix(z_ND: Any, name: str, min_rows: int = 1) -> np.ndarray:
  """`z_ND` as a float64 [N, D] array, or a ValueError naming the metric."""
  z = np.asarray(z_ND, np.float64)
  if z.ndim != 2:
    raise ValueError(f"{name} takes a matrix Z [N, D]; got an array of shape {z.shape}.")
  if z.shape[0] < min_rows or z.shape[1] < 1:
    raise ValueError(f"{name} needs Z [N, D] with N >= {min_rows} and D >= 1; got shape {z.shape}.")
  return z


# --------------------------------------------------------------------------------------- matrix entropy
def preprocess(
  x_ND: np.ndarray,
  convention: str = "none",
  mean_D: np.ndarray | None = None,
  std_D: np.ndarray | None = None,
) -> np.ndarray:
  """Z of a convention (float64):

  lime   (x - mean_D) / (std_D + 1e-6): each feature z-scored with dataset statistics (mean / std over
         all tokens of the eval set, per layer; the LIMe code); without them, x's own column statistics;
  skean  x minus its mean row, then each row L2-normalised (Skean et al. 2025; their code's `normalize`);
  none   x as is.
  """
  z = np.asarray(x_ND, np.float64)
  if convention == "lime":
    mean_D = z.mean(axis=0) if mean_D is None else np.asarray(mean_D, np.float64)
    std_D = z.std(axis=0) if std_D is None else np.asarray(std_D, np.float64)
    return (z - mean_D) / (std_D + 1e-6)
  if convention == "skean":
    z = z - z.mean(axis=0, keepdims=True)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), _EPS)
  if convention == "none":
    return z
  raise ValueError(f"entropy convention {convention!r} is unknown; use one of {CONVENTIONS}.")


def renyi_entropy(p: np.ndarray, alpha: float) -> float:
  """Renyi entropy (nats) of a probability vector: log(sum_i p_i^alpha) / (1 - alpha); alpha = 1 (within
  1e-9) is the Shannon limit -sum_i p_i log p_i. Entries <= 1e-12 are dropped."""
  p = p[p > _EPS]
  if abs(alpha - 1.0) < 1e-9:
    return float(-(p * np.log(p)).sum())
  return float(np.log((p**alpha).sum()) / (1.0 - alpha))


def gram_spectrum(z_ND: np.ndarray) -> np.ndarray:
  """Eigenvalue distribution p_i = lambda_i(K) / tr(K) of K = Z Z^T [N, N] (float64, negative rounding
  noise clipped to 0). Z^T Z (the feature covariance, up to 1/N once Z is centred) has the same non-zero
  eigenvalues, so either matrix gives the same entropy."""
  z = np.asarray(z_ND, np.float64)
  lam = np.clip(np.linalg.eigvalsh(z @ z.T), 0.0, None)
  return lam / max(lam.sum(), _EPS)


def matrix_entropy(
  x_ND: np.ndarray,
  alpha: float = 1.0,
  convention: str = "none",
  normalize: bool | None = None,
  mean_D: np.ndarray | None = None,
  std_D: np.ndarray | None = None,
) -> float:
  """Matrix-based Renyi-alpha entropy (nats) of x [N, D]:

    Z = preprocess(x, convention),  p_i = lambda_i(Z Z^T) / tr(Z Z^T),
    S_alpha = log(sum_i p_i^alpha) / (1 - alpha),  S_1 = -sum_i p_i log p_i,

  divided by log(min(N, D)) when `normalize` (default: True for 'skean' only), so that it lies in
  [0, 1]. Sources: Seq-VCR Eq. 2 and the LIMe code ('lime': z-scored features, alpha 0.5 or 0.99, not
  normalised); Skean et al. 2025, "Layer by Layer" (arXiv 2502.02013), prompt entropy ('skean': centred
  unit rows, alpha 1, normalised). The normalisation is their code's default ('maxEntropy' in
  OFSkean/information_flow: entropy / min(log N, log D)), the largest value S_alpha can take since
  rank(Z) <= min(N, D); dividing by log N alone would not reach 1 when D < N. Their code also clamps
  the Gram's negative entries to 0 before the eigenvalues; that step is in neither paper's formula
  and is not done here. k equal non-zero eigenvalues give log k for every alpha.
  """
  x = _matrix(x_ND, "matrix_entropy")
  S = renyi_entropy(gram_spectrum(preprocess(x, convention, mean_D, std_D)), alpha)
  if normalize if normalize is not None else convention == "skean":
    S /= max(np.log(min(x.shape)), _EPS)
  return S


# ----------------------------------------------------------------------------------------------- rank
def effective_rank(z_ND: np.ndarray) -> float:
  """Effective rank (Roy & Vetterli 2007): exp(-sum_k p_k log p_k), p_k = sigma_k / sum_j sigma_j over
  the singular values sigma of Z (float64; p_k <= 1e-12 dropped). k equal singular values give k."""
  s = np.linalg.svd(_matrix(z_ND, "effective_rank"), compute_uv=False)
  return float(np.exp(renyi_entropy(s / max(s.sum(), _EPS), 1.0)))


def rankme(z_ND: np.ndarray, eps: float = 1e-7) -> float:
  """RankMe (Garrido et al. 2023, Eq. 1): exp(-sum_k p_k log p_k), p_k = sigma_k / sum_j sigma_j + eps,
  over all min(N, D) singular values of Z (zeros included). It is `effective_rank` with eps added to
  every p_k instead of dropping p_k <= 1e-12, so the two differ by O(min(N, D) * eps * log(1 / eps))
  (about 2e-6 per singular value at eps = 1e-7), and rankme > 1 for a rank-one Z."""
  s = np.linalg.svd(_matrix(z_ND, "rankme"), compute_uv=False)
  p = s / max(s.sum(), _EPS) + eps
  return float(np.exp(-(p * np.log(p)).sum()))


# ------------------------------------------------------------------------------------------- cosines
def _unit_rows(z_ND: np.ndarray) -> np.ndarray:
  """Rows divided by their L2 norm (a zero row stays zero: its cosine with anything counts as 0)."""
  return z_ND / np.maximum(np.linalg.norm(z_ND, axis=1, keepdims=True), _EPS)


def anisotropy(z_ND: np.ndarray) -> float:
  """Mean pairwise cosine similarity over distinct rows (Ethayarajh 2019):

    1 / (N (N - 1)) * sum_{i != j} <z_i, z_j> / (|z_i| |z_j|)
      = (|sum_i u_i|^2 - sum_i |u_i|^2) / (N (N - 1)),  u_i = z_i / |z_i|,

  computed by the right-hand side in O(N D). 1 for identical rows, about 0 for an isotropic cloud around
  the origin, >= -1 / (N - 1). Zero rows count as cosine 0 with every other row.
  """
  u = _unit_rows(_matrix(z_ND, "anisotropy", min_rows=2))
  n = u.shape[0]
  total = u.sum(axis=0)
  return float((total @ total - (u * u).sum()) / (n * (n - 1)))


def paired_cosine(a_ND: np.ndarray, b_ND: np.ndarray) -> np.ndarray:
  """cos(a_i, b_i) = <a_i, b_i> / max(|a_i| |b_i|, 1e-12) per row [N] (float64), e.g. one token in two
  adjacent layers; 0 where either row is zero."""
  a, b = _matrix(a_ND, "paired_cosine"), _matrix(b_ND, "paired_cosine")
  if a.shape != b.shape:
    raise ValueError(f"paired_cosine takes two matrices of one shape; got {a.shape} and {b.shape}.")
  norms_N = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return (a * b).sum(-1) / np.maximum(norms_N, _EPS)


# ------------------------------------------------------------------------------- intrinsic dimension
def _two_nearest(z_ND: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """(r1 [N], r2 [N]): Euclidean distances of each row to its nearest and second-nearest other row.
  Candidates come from |a|^2 + |b|^2 - 2<a, b> in row chunks; their distances are then recomputed as
  |z_i - z_j| so that cancellation does not enter r1, r2."""
  n = z_ND.shape[0]
  sq_N = (z_ND * z_ND).sum(axis=1)
  k = min(4, n - 1)  # a few candidates, in case the fast formula misorders near ties
  r1, r2 = np.empty(n), np.empty(n)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    d2_CN = sq_N[start:stop, None] + sq_N[None, :] - 2.0 * (z_ND[start:stop] @ z_ND.T)
    d2_CN[np.arange(stop - start), np.arange(start, stop)] = np.inf
    idx_CK = np.argpartition(d2_CN, k - 1, axis=1)[:, :k]
    dist_CK = np.sort(np.linalg.norm(z_ND[start:stop, None, :] - z_ND[idx_CK], axis=-1), axis=1)
    r1[start:stop], r2[start:stop] = dist_CK[:, 0], dist_CK[:, 1]
  return r1, r2


def twonn_dimension(z_ND: np.ndarray, discard_fraction: float = 0.1, estimator: str = "fit") -> float:
  """TwoNN intrinsic dimension (Facco et al. 2017, Sci. Rep. 7:12140).

  Duplicate rows are merged first (np.unique), so every point has r1 > 0; N below is the number of
  distinct points. For each point mu_i = r2 / r1 (distances to its second and first nearest neighbour);
  if the density is locally uniform, mu is Pareto: F(mu) = 1 - mu^-d. Sorting log mu_(1) <= ... and
  keeping the k = N - floor(discard_fraction * N) smallest (the largest mu come from inhomogeneities):

    'fit'  (the paper's estimator, and dadapy's `compute_id_2NN`): the least-squares line through the
           origin of y_i = -log(1 - i / N) against x_i = log mu_(i), i <= k:  d = sum x y / sum x^2.
           Needs floor(discard_fraction * N) >= 1 (y_N is infinite).
    'mle'  the maximum-likelihood rate of the exponential log mu, with the discarded points as
           right-censored at x_k (type II censoring), bias-corrected:
           d = (k - 1) / (sum_{i<=k} x_i + (N - k) x_k);  with nothing discarded, (N - 1) / sum_i log mu_i.
  """
  if estimator not in TWONN_ESTIMATORS:
    raise ValueError(f"twonn_dimension estimator {estimator!r} is unknown; use one of {TWONN_ESTIMATORS}.")
  if not 0.0 <= discard_fraction < 1.0:
    raise ValueError(f"twonn_dimension needs 0 <= discard_fraction < 1; got {discard_fraction}.")
  z = np.unique(_matrix(z_ND, "twonn_dimension", min_rows=3), axis=0)
  n = z.shape[0]
  n_drop = int(np.floor(discard_fraction * n))
  k = n - n_drop
  if n < 3 or k < 2:
    raise ValueError(
      f"twonn_dimension needs at least 3 distinct rows and 2 kept after discarding; got {n} distinct, "
      f"{k} kept."
    )
  if estimator == "fit" and n_drop == 0:
    raise ValueError(
      f"twonn_dimension(estimator='fit') discards no point at N={n}, discard_fraction={discard_fraction}"
      "; the empirical CDF reaches 1 at the largest mu. Raise discard_fraction or use estimator='mle'."
    )
  r1, r2 = _two_nearest(z)
  x_K = np.sort(np.log(r2 / r1))[:k]
  if estimator == "fit":
    y_K = -np.log1p(-np.arange(1, k + 1) / n)
    return float((x_K @ y_K) / max(x_K @ x_K, _EPS))
  return float((k - 1) / max(x_K.sum() + (n - k) * x_K[-1], _EPS))


# -------------------------------------------------------------------------------------------- layers
def per_layer(metric: Callable[..., float], z_LND: np.ndarray, **kwargs: Any) -> np.ndarray:
  """[metric(z_LND[l], **kwargs) for each layer l] as a float64 array [L]."""
  z = np.asarray(z_LND)
  if z.ndim != 3:
    raise ValueError(f"per_layer takes a stack Z [L, N, D]; got an array of shape {z.shape}.")
  return np.array([metric(z_ND, **kwargs) for z_ND in z], np.float64)
