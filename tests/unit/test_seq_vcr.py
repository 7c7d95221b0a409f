"""Tests of the Seq-VCR loss against a literal Eq. 3-4, on degenerate batches and in bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.losses import aligned_positions, seq_vcr_loss

ETA = 1e-3


# ------------------------------------------------------------------- literal reference (float64)


def _covariance(samples_ND: np.ndarray) -> np.ndarray:
  """Unbiased covariance of the rows, by explicit loops over features and samples."""
  n, d = samples_ND.shape
  mean = [sum(samples_ND[j, k] for j in range(n)) / n for k in range(d)]
  cov = np.zeros((d, d))
  for k in range(d):
    for kk in range(d):
      cov[k, kk] = sum((samples_ND[j, k] - mean[k]) * (samples_ND[j, kk] - mean[kk]) for j in range(n)) / (
        n - 1
      )
  return cov


def _eq34(covs: list[np.ndarray], d: int, lambda1: float, lambda2: float) -> tuple[float, float]:
  """Weighted (variance, covariance) terms of Eq. 3-4 over a list of covariances: for i, k, k'."""
  variance = covariance = 0.0
  for cov in covs:  # for i
    for k in range(d):
      variance += lambda1 * max(0.0, 1.0 - np.sqrt(cov[k, k] + ETA))
      for kk in range(d):
        if kk != k:
          covariance += lambda2 * cov[k, kk] ** 2
  norm = len(covs) * d
  return variance / norm, covariance / norm


def reference_per_position(x, mask_T, lambda1, lambda2):
  x = np.asarray(x, np.float64)
  _, t, d = x.shape
  positions = [i for i in range(t) if mask_T is None or mask_T[i]]
  return _eq34([_covariance(x[:, i, :]) for i in positions], d, lambda1, lambda2)


def reference_batch_length(x, mask_NT, lambda1, lambda2):
  x = np.asarray(x, np.float64)
  n, t, d = x.shape
  rows = [x[j, i] for j in range(n) for i in range(t) if mask_NT is None or mask_NT[j, i]]
  return _eq34([_covariance(np.stack(rows))], d, lambda1, lambda2)


def _random(shape, seed=0, scale=0.7):
  g = np.random.default_rng(seed)
  # Correlated features with varied scales, so both terms are far from zero.
  x = g.standard_normal(shape) * scale
  mix = np.eye(shape[-1]) + 0.3 * g.standard_normal((shape[-1], shape[-1]))
  return (x @ mix).astype(np.float32)


def _close(got, want, rtol=1e-6):
  np.testing.assert_allclose(float(got), want, rtol=rtol, atol=0.0)


# ------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("shape", [(6, 4, 9), (9, 3, 5)])  # N <= d (Gram) and N > d (d x d).
def test_per_position_matches_literal(shape):
  x = _random(shape)
  out = seq_vcr_loss(x, lambda1=1.0, lambda2=0.004)
  var, cov = reference_per_position(x, None, 1.0, 0.004)
  _close(out["variance"], var)
  _close(out["covariance"], cov)
  _close(out["loss"], var + cov)


def test_per_position_mask_matches_literal():
  x = _random((5, 6, 7), seed=1)
  mask_T = np.array([1, 0, 1, 1, 0, 1], bool)
  x_garbage = x.copy()
  x_garbage[:, ~mask_T] = np.inf  # masked-out positions must not leak in.
  out = seq_vcr_loss(x_garbage, mask_T, lambda1=0.1, lambda2=0.5)
  var, cov = reference_per_position(x, mask_T, 0.1, 0.5)
  _close(out["variance"], var)
  _close(out["covariance"], cov)


@pytest.mark.parametrize("shape", [(3, 2, 8), (4, 3, 5)])  # N*T <= d (Gram) and N*T > d (d x d).
def test_batch_length_matches_literal(shape):
  x = _random(shape, seed=2)
  out = seq_vcr_loss(x, lambda1=1.0, lambda2=0.004, variant="batch_length")
  var, cov = reference_batch_length(x, None, 1.0, 0.004)
  _close(out["variance"], var)
  _close(out["covariance"], cov)


@pytest.mark.parametrize("shape", [(3, 3, 12), (4, 5, 3)])
def test_batch_length_example_mask_matches_literal(shape):
  x = _random(shape, seed=3)
  mask_NT = np.random.default_rng(4).random(shape[:2]) < 0.6
  mask_NT[0, :2] = True
  out = seq_vcr_loss(x, mask_NT, lambda1=0.1, lambda2=0.5, variant="batch_length")
  var, cov = reference_batch_length(x, mask_NT, 0.1, 0.5)
  _close(out["variance"], var)
  _close(out["covariance"], cov)
  # A [T] mask means the same as that column pattern for every example.
  mask_T = np.array([1, 0, 1] + [1] * (shape[1] - 3), bool)
  out_t = seq_vcr_loss(x, mask_T, lambda1=0.1, lambda2=0.5, variant="batch_length")
  want = reference_batch_length(x, np.broadcast_to(mask_T, shape[:2]), 0.1, 0.5)
  _close(out_t["loss"], sum(want))


def test_variants_agree_on_one_position():
  x = _random((7, 1, 6), seed=5)
  a = seq_vcr_loss(x, lambda1=1.0, lambda2=0.1)
  b = seq_vcr_loss(x, lambda1=1.0, lambda2=0.1, variant="batch_length")
  _close(a["loss"], float(b["loss"]))


def test_per_position_rejects_example_mask():
  x = _random((4, 3, 5))
  with pytest.raises(ValueError, match="aligned_positions"):
    seq_vcr_loss(x, np.ones((4, 3)), lambda1=1.0, lambda2=1.0)
  mask_NT = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
  np.testing.assert_array_equal(aligned_positions(mask_NT), [1.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("variant", ["per_position", "batch_length"])
def test_single_sample_raises(variant):
  with pytest.raises(ValueError, match="N=1"):
    seq_vcr_loss(np.ones((1, 3, 4), np.float32), lambda1=1.0, lambda2=1.0, variant=variant)


def test_bad_arguments_raise():
  x = _random((3, 2, 4))
  with pytest.raises(ValueError, match="eta"):
    seq_vcr_loss(x, lambda1=1.0, lambda2=1.0, eta=0.0)
  with pytest.raises(ValueError, match="variant"):
    seq_vcr_loss(x, lambda1=1.0, lambda2=1.0, variant="batch")
  with pytest.raises(ValueError, match=r"\[N, T, d\]"):
    seq_vcr_loss(x[0], lambda1=1.0, lambda2=1.0)


@pytest.mark.parametrize("variant", ["per_position", "batch_length"])
@pytest.mark.parametrize("shape", [(4, 3, 6), (8, 2, 3)])
def test_identical_rows_finite_value_and_zero_gradient(variant, shape):
  row = np.random.default_rng(6).standard_normal(shape[1:]).astype(np.float32)
  x = jnp.broadcast_to(jnp.asarray(row)[None], shape)
  if variant == "batch_length":  # one vector per example: pooled rows are identical too.
    x = x[:, :1]
  fn = lambda x: seq_vcr_loss(x, lambda1=1.0, lambda2=0.5, variant=variant)["loss"]
  value, grad = jax.value_and_grad(fn)(x)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(float(value), 1.0 - np.sqrt(ETA), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-3)


@pytest.mark.parametrize("variant", ["per_position", "batch_length"])
@pytest.mark.parametrize("shape", [(5, 4, 7), (9, 3, 4), (2, 1, 3)])
def test_gradient_is_finite(variant, shape):
  x = _random(shape, seed=7)
  mask_T = np.array([1] * (shape[1] - 1) + [0])
  fn = lambda x: seq_vcr_loss(x, mask_T, lambda1=1.0, lambda2=0.5, variant=variant)["loss"]
  grad = jax.grad(fn)(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert float(jnp.abs(grad).sum()) > 0 or shape[1] == 1


def test_no_counted_positions_gives_zero():
  x = _random((4, 3, 5))
  for variant in ("per_position", "batch_length"):
    fn = lambda x: seq_vcr_loss(x, np.zeros(3), lambda1=1.0, lambda2=1.0, variant=variant)["loss"]
    value, grad = jax.value_and_grad(fn)(jnp.asarray(x))
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("variant", ["per_position", "batch_length"])
def test_variance_hinge_is_zero_when_std_at_least_one(variant):
  g = np.random.default_rng(8)
  z = g.standard_normal((16, 3, 5))
  z = (
    (z - z.mean(axis=(0, 1), keepdims=True))
    if variant == "batch_length"
    else (z - z.mean(axis=0, keepdims=True))
  )
  axes = (0, 1) if variant == "batch_length" else (0,)
  x = (z / z.std(axis=axes, ddof=1, keepdims=True) * g.uniform(1.0, 3.0, size=(1, 1, 5))).astype(
    np.float32
  )  # per-feature std in [1, 3].
  fn = lambda x: seq_vcr_loss(x, lambda1=1.0, lambda2=0.0, variant=variant)
  out = fn(x)
  assert float(out["variance"]) == 0.0 and float(out["loss"]) == 0.0
  grad = jax.grad(lambda x: fn(x)["loss"])(jnp.asarray(x))
  assert np.all(np.asarray(grad) == 0.0)
  # Shrinking the features below std 1 switches the hinge on.
  assert float(fn(0.1 * x)["variance"]) > 0.0


def test_bfloat16_input_is_computed_in_fp32():
  x = _random((4, 3, 6), seed=9)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  out = seq_vcr_loss(x_bf16, lambda1=1.0, lambda2=0.5)
  assert out["loss"].dtype == jnp.float32
  var, cov = reference_per_position(np.asarray(x_bf16.astype(jnp.float32)), None, 1.0, 0.5)
  _close(out["loss"], var + cov)
