"""Matrix entropy, effective rank: closed forms and an independent singular-value reference."""

from __future__ import annotations

import numpy as np
import pytest

from lime_jax.probes.entropy import effective_rank, matrix_entropy, preprocess


def _orthonormal_rows(T: int, d: int, seed: int = 0) -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, T)))
  return q.T  # [T, d], orthonormal rows


@pytest.mark.parametrize("alpha", [0.5, 0.99, 1.0, 2.0])
def test_orthogonal_rows_give_log_t(alpha):
  x = 3.0 * _orthonormal_rows(8, 20)
  assert matrix_entropy(x, alpha, "none") == pytest.approx(np.log(8), rel=1e-10)
  assert matrix_entropy(x, alpha, "none", normalize=True) == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("alpha", [0.5, 0.99, 1.0])
def test_rank_one_gives_zero(alpha):
  rng = np.random.default_rng(1)
  x = np.outer(rng.standard_normal(10), rng.standard_normal(6))
  assert abs(matrix_entropy(x, alpha, "none")) < 1e-9
  assert effective_rank(x) == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_of_orthogonal_rows_is_t():
  assert effective_rank(_orthonormal_rows(5, 12)) == pytest.approx(5.0, rel=1e-10)


@pytest.mark.parametrize("convention,alpha", [("skean", 1.0), ("lime", 0.5), ("lime", 0.99)])
def test_conventions_match_singular_value_reference(convention, alpha):
  """Eigenvalues of Z Z^T are the squared singular values of Z: an independent route."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((12, 7)) @ rng.standard_normal((7, 16)) + 0.5
  if convention == "skean":
    z = x - x.mean(0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  else:
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
  p = np.linalg.svd(z, compute_uv=False) ** 2
  p = p[p > 1e-12] / p.sum()
  ref = -(p * np.log(p)).sum() if alpha == 1.0 else np.log((p**alpha).sum()) / (1 - alpha)
  if convention == "skean":
    ref /= np.log(min(x.shape))
  assert matrix_entropy(x, alpha, convention) == pytest.approx(ref, rel=1e-9)


def test_lime_uses_given_dataset_statistics():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((6, 5))
  mean, std = np.full(5, 0.3), np.full(5, 2.0)
  np.testing.assert_allclose(preprocess(x, "lime", mean, std), (x - 0.3) / (2.0 + 1e-6))
  with pytest.raises(ValueError, match="convention"):
    preprocess(x, "bogus")
