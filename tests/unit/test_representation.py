"""lime_jax.analysis.representation: every metric against a literal numpy formula written here (loops,
no helper of the module), plus known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lime_jax.analysis import representation as rep


def _random(n: int, d: int, seed: int) -> np.ndarray:
  """A correlated, off-centre random matrix [n, d] (a non-flat spectrum)."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


def _orthonormal_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, n)))
  return q.T  # [n, d], orthonormal rows


# ------------------------------------------------------------------------------------- literal formulas
def _ref_matrix_entropy(x, alpha, convention, normalize, mean=None, std=None):
  x = np.array(x, np.float64)
  n, d = x.shape
  if convention == "lime":
    mean = x.mean(0) if mean is None else mean
    std = x.std(0) if std is None else std
    z = (x - mean) / (std + 1e-6)
  elif convention == "skean":
    z = x - x.mean(0)
    z = np.stack([row / math.sqrt(sum(v * v for v in row)) for row in z])
  else:
    z = x
  K = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      K[i, j] = sum(z[i, k] * z[j, k] for k in range(d))
  lam = np.linalg.eigvalsh(K / np.trace(K))
  lam = [v for v in lam if v > 1e-12]
  if alpha == 1.0:
    s = -sum(v * math.log(v) for v in lam)
  else:
    s = math.log(sum(v**alpha for v in lam)) / (1.0 - alpha)
  return s / math.log(min(n, d)) if normalize else s


def _ref_effective_rank(z):
  s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = [v / s.sum() for v in s if v / s.sum() > 1e-12]
  return math.exp(-sum(v * math.log(v) for v in p))


def _ref_rankme(z, eps=1e-7):
  s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = [v / s.sum() + eps for v in s]
  return math.exp(-sum(v * math.log(v) for v in p))


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ref_anisotropy(z):
  n = len(z)
  return sum(_cos(z[i], z[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def _ref_twonn(z, discard_fraction, estimator):
  z = np.asarray(z, np.float64)
  n = len(z)
  mus = []
  for i in range(n):
    dist = sorted(math.dist(z[i], z[j]) for j in range(n) if j != i)
    mus.append(dist[1] / dist[0])
  x = np.log(np.sort(mus))
  k = n - int(np.floor(discard_fraction * n))
  x = x[:k]
  if estimator == "fit":
    y = np.array([-math.log(1.0 - i / n) for i in range(1, k + 1)])
    slope, *_ = np.linalg.lstsq(x[:, None], y, rcond=None)
    return float(slope[0])
  return (k - 1) / (x.sum() + (n - k) * x[-1])


# ------------------------------------------------------------------------------- against the formulas
@pytest.mark.parametrize(
  "convention,alpha,normalize",
  [
    ("none", 1.0, False),
    ("none", 2.0, True),
    ("lime", 0.5, False),
    ("lime", 0.99, False),
    ("skean", 1.0, True),
  ],
)
@pytest.mark.parametrize("shape", [(9, 5), (6, 14)])
def test_matrix_entropy_matches_the_formula(convention, alpha, normalize, shape):
  x = _random(*shape, seed=1)
  got = rep.matrix_entropy(x, alpha, convention, normalize=normalize)
  assert got == pytest.approx(_ref_matrix_entropy(x, alpha, convention, normalize), rel=1e-9)


def test_matrix_entropy_lime_uses_the_given_statistics_and_skean_normalises_by_default():
  x = _random(8, 6, seed=2)
  mean, std = np.full(6, 0.3), np.full(6, 2.0)
  got = rep.matrix_entropy(x, 0.5, "lime", mean_D=mean, std_D=std)
  assert got == pytest.approx(_ref_matrix_entropy(x, 0.5, "lime", False, mean, std), rel=1e-9)
  assert rep.matrix_entropy(x, 1.0, "skean") == pytest.approx(_ref_matrix_entropy(x, 1.0, "skean", True))


def test_gram_and_feature_covariance_give_one_entropy():
  z = _random(7, 11, seed=3)
  lam = np.clip(np.linalg.eigvalsh(z.T @ z), 0.0, None)  # [D, D] instead of [N, N]
  p = lam[lam > 1e-12 * lam.sum()] / lam.sum()
  assert rep.matrix_entropy(z, 1.0) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)


@pytest.mark.parametrize("shape", [(10, 4), (5, 12)])
def test_effective_rank_and_rankme_match_the_formulas(shape):
  z = _random(*shape, seed=4)
  assert rep.effective_rank(z) == pytest.approx(_ref_effective_rank(z), rel=1e-10)
  assert rep.rankme(z) == pytest.approx(_ref_rankme(z), rel=1e-10)
  assert rep.rankme(z, eps=1e-3) == pytest.approx(_ref_rankme(z, 1e-3), rel=1e-10)


def test_anisotropy_and_paired_cosine_match_loops():
  z = _random(12, 5, seed=5)
  assert rep.anisotropy(z) == pytest.approx(_ref_anisotropy(z), rel=1e-10)
  a, b = _random(6, 4, seed=6), _random(6, 4, seed=7)
  np.testing.assert_allclose(rep.paired_cosine(a, b), [_cos(a[i], b[i]) for i in range(6)], rtol=1e-12)


@pytest.mark.parametrize("estimator,discard", [("fit", 0.1), ("fit", 0.25), ("mle", 0.1), ("mle", 0.0)])
def test_twonn_matches_the_formula(estimator, discard):
  z = np.random.default_rng(8).standard_normal((60, 3))
  got = rep.twonn_dimension(z, discard_fraction=discard, estimator=estimator)
  assert got == pytest.approx(_ref_twonn(z, discard, estimator), rel=1e-9)


def test_per_layer_applies_the_metric_to_each_layer():
  z_LND = np.stack([_random(8, 5, seed=s) for s in range(3)])
  got = rep.per_layer(rep.matrix_entropy, z_LND, alpha=0.5, convention="lime")
  assert got.shape == (3,) and got.dtype == np.float64
  np.testing.assert_allclose(got, [_ref_matrix_entropy(z, 0.5, "lime", False) for z in z_LND], rtol=1e-9)


# ------------------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("alpha", [0.5, 0.99, 1.0, 2.0, 5.0])
def test_k_equal_eigenvalues_give_log_k_for_every_alpha(alpha):
  z = 3.0 * _orthonormal_rows(6, 15)  # Z Z^T = 9 I_6
  assert rep.matrix_entropy(z, alpha) == pytest.approx(math.log(6), rel=1e-10)
  assert rep.matrix_entropy(z, alpha, normalize=True) == pytest.approx(1.0, rel=1e-10)


def test_rank_k_with_equal_singular_values_has_effective_rank_k():
  u = _orthonormal_rows(4, 20, seed=1).T  # [20, 4]
  v = _orthonormal_rows(4, 9, seed=2)  # [4, 9]
  z = 2.5 * u @ v  # rank 4, singular values all 2.5
  assert rep.effective_rank(z) == pytest.approx(4.0, rel=1e-10)
  assert rep.rankme(z) == pytest.approx(4.0, rel=1e-4)  # eps moves it by ~1e-5


def test_rankme_differs_from_effective_rank_only_by_eps():
  z = _random(30, 16, seed=9)
  assert abs(rep.rankme(z) - rep.effective_rank(z)) < 1e-3
  assert rep.rankme(z, eps=0.0) == pytest.approx(rep.effective_rank(z), rel=1e-12)
  rank_one = np.outer(np.arange(1.0, 6.0), np.ones(4))
  assert rep.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-12) and rep.rankme(rank_one) > 1.0


def test_anisotropy_known_answers():
  rng = np.random.default_rng(10)
  assert abs(rep.anisotropy(rng.standard_normal((400, 32)))) < 0.01  # isotropic Gaussian
  assert rep.anisotropy(np.tile(rng.standard_normal(7), (5, 1))) == pytest.approx(1.0, rel=1e-12)
  shifted = rng.standard_normal((400, 32)) + 5.0  # a common direction dominates
  assert rep.anisotropy(shifted) > 0.9


@pytest.mark.parametrize("estimator", ["fit", "mle"])
def test_twonn_of_a_plane_in_10d_is_2(estimator):
  rng = np.random.default_rng(11)
  basis = _orthonormal_rows(2, 10, seed=3)  # [2, 10]
  z = rng.uniform(size=(2000, 2)) @ basis + rng.standard_normal(10)
  assert rep.twonn_dimension(z, estimator=estimator) == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("estimator", ["fit", "mle"])
def test_twonn_of_a_5d_hypercube_is_5(estimator):
  z = np.random.default_rng(12).uniform(size=(2000, 5))
  assert rep.twonn_dimension(z, estimator=estimator) == pytest.approx(5.0, rel=0.2)


def test_twonn_merges_duplicate_rows():
  z = np.random.default_rng(13).standard_normal((50, 3))
  with_dups = np.concatenate([z, z[:10], z[:3]])
  assert rep.twonn_dimension(with_dups) == rep.twonn_dimension(z)


# -------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
  "metric", [rep.matrix_entropy, rep.effective_rank, rep.rankme, rep.anisotropy, rep.twonn_dimension]
)
def test_metrics_reject_non_matrices(metric):
  with pytest.raises(ValueError, match=r"matrix Z \[N, D\]"):
    metric(np.ones(5))
  with pytest.raises(ValueError, match=r"matrix Z \[N, D\]"):
    metric(np.ones((2, 3, 4)))


def test_metrics_reject_too_few_rows_and_bad_options():
  with pytest.raises(ValueError, match="N >= 2"):
    rep.anisotropy(np.ones((1, 4)))
  with pytest.raises(ValueError, match="N >= 3"):
    rep.twonn_dimension(np.ones((2, 4)))
  with pytest.raises(ValueError, match="3 distinct rows"):
    rep.twonn_dimension(np.ones((6, 4)))
  with pytest.raises(ValueError, match="discards no point"):
    rep.twonn_dimension(np.random.default_rng(0).standard_normal((5, 2)), discard_fraction=0.1)
  with pytest.raises(ValueError, match="estimator"):
    rep.twonn_dimension(np.ones((6, 4)), estimator="bogus")
  with pytest.raises(ValueError, match="convention"):
    rep.matrix_entropy(np.ones((3, 4)), 1.0, "bogus")
  with pytest.raises(ValueError, match="one shape"):
    rep.paired_cosine(np.ones((3, 4)), np.ones((3, 5)))
  with pytest.raises(ValueError, match=r"stack Z \[L, N, D\]"):
    rep.per_layer(rep.anisotropy, np.ones((3, 4)))
