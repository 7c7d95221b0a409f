"""The hand-written backward passes of the train step's building blocks (issue 32) against autodiff of
the textbook expressions: 2-D projections (lime_jax/model/dense.py), RMSNorm and the gated MLP activation
(layers.py), and attention that recomputes its probabilities (attention.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from lime_jax.model import attention
from lime_jax.model.dense import dense
from lime_jax.model.layers import ACTIVATIONS, gated, rms_norm


def _grads(f, *args):
  """Value and the gradient of sum(f * fixed random cotangent) for every argument."""
  out = f(*args)
  cot = jax.random.normal(jax.random.key(7), out.shape, jnp.float32).astype(out.dtype)
  return out, jax.grad(
    lambda *a: jnp.sum((f(*a) * cot).astype(jnp.float32)), argnums=tuple(range(len(args)))
  )(*args)


def _assert_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize(
  "x_shape, w_shape, in_dims, spec, transposed",
  [
    ((2, 5, 8), (8, 12), 1, "btd,df->btf", False),
    ((2, 5, 8), (8, 3, 4), 1, "btd,dnh->btnh", False),
    ((2, 5, 3, 4), (3, 4, 8), 2, "btnh,nhd->btd", False),
    ((2, 5, 8), (11, 8), 1, "btd,vd->btv", True),
  ],
)
def test_dense_equals_einsum_forward_and_backward(x_shape, w_shape, in_dims, spec, transposed):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  got = _grads(lambda x, w: dense(x, w, in_dims, w_transposed=transposed), x, w)
  want = _grads(lambda x, w: jnp.einsum(spec, x, w), x, w)
  _assert_close(got, want, 1e-5)


def test_dense_refuses_mismatched_dims():
  with pytest.raises(ValueError, match="does not contract"):
    dense(jnp.zeros((2, 3, 4)), jnp.zeros((5, 6)))


def _rms_textbook(x, scale, eps, offset):
  x32 = x.astype(jnp.float32)
  scale_11D = (scale.astype(jnp.float32) + offset).reshape((1,) * (x.ndim - 1) + (-1,))
  y = x32 / jnp.sqrt(jnp.mean(x32**2, axis=-1, keepdims=True) + eps) * scale_11D
  return y.astype(x.dtype)


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(3, 7, 16), (2, 5, 4, 8)])
def test_rms_norm_gradients_equal_autodiff_of_the_formula(shape, offset):
  kx, ks = jax.random.split(jax.random.key(1))
  x = 3.0 * jax.random.normal(kx, shape)
  scale = 1.0 + 0.1 * jax.random.normal(ks, shape[-1:])
  got = _grads(lambda x, s: rms_norm(x, s, 1e-6, offset), x, scale)
  want = _grads(lambda x, s: _rms_textbook(x, s, 1e-6, offset), x, scale)
  _assert_close(got, want, 2e-5)


def test_rms_norm_bf16_keeps_dtypes():
  x = jax.random.normal(jax.random.key(2), (2, 3, 8)).astype(jnp.bfloat16)
  scale = jnp.ones((8,), jnp.float32)
  got = _grads(lambda x, s: rms_norm(x, s, 1e-6), x, scale)
  want = _grads(lambda x, s: _rms_textbook(x, s, 1e-6, 0.0), x, scale)
  _assert_close(got, want, 2e-2)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_gated_activation_gradients_equal_autodiff(name):
  act = ACTIVATIONS[name]
  kg, ku = jax.random.split(jax.random.key(3))
  g, u = 2.0 * jax.random.normal(kg, (2, 5, 12)), jax.random.normal(ku, (2, 5, 12))
  _assert_close(_grads(lambda g, u: gated(act, g, u), g, u), _grads(lambda g, u: act(g) * u, g, u), 1e-5)


def _attention_inputs(B=2, T=6, S=6, N=4, R=2, H=8, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(4), 3)
  q = jax.random.normal(kq, (B, T, N, H)).astype(dtype)
  k = jax.random.normal(kk, (B, S, R, H)).astype(dtype)
  v = jax.random.normal(kv, (B, S, R, H)).astype(dtype)
  return q, k, v


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", ["causal", "window", "documents"])
def test_recompute_attention_equals_autodiff_of_explicit_attention(heads, mask_kind):
  N, R = heads
  q, k, v = _attention_inputs(N=N, R=R)
  T = q.shape[1]
  mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
  if mask_kind == "window":
    mask = mask & ~jnp.tril(jnp.ones((T, T), bool), k=-3)[None, None]
  if mask_kind == "documents":  # per-row mask [B, 1, T, T]: a second document from position 3 in row 1
    positions = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]])
    mask = mask & attention.document_mask(positions)
  got = _grads(lambda q, k, v: attention.recompute_attention(q, k, v, mask, 0.3), q, k, v)
  want = _grads(lambda q, k, v: attention.explicit_attention(q, k, v, mask, 0.3)[0], q, k, v)
  _assert_close(got, want, 2e-5)


def test_recompute_attention_bf16():
  q, k, v = _attention_inputs(dtype=jnp.bfloat16)
  mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
  got = _grads(lambda q, k, v: attention.recompute_attention(q, k, v, mask, 0.35), q, k, v)
  want = _grads(lambda q, k, v: attention.explicit_attention(q, k, v, mask, 0.35)[0], q, k, v)
  _assert_close(got, want, 5e-2)


def test_cpu_xla_attention_saves_no_probabilities():
  """On CPU, impl 'xla' runs the recomputing attention: nothing of size [B, N, T, S] is kept for the
  backward pass, where autodiff of the explicit attention keeps several such tensors."""
  q, k, v = _attention_inputs(B=2, T=16, S=16, N=4, R=4, H=8)
  quadratic = 2 * 4 * 16 * 16

  def kept(f):
    return [a for a, _ in saved_residuals(f, q, k, v) if a.size >= quadratic]

  assert jax.default_backend() == "cpu"
  assert kept(lambda q, k, v: attention.attend(q, k, v, "xla")[0]) == []
  assert len(kept(lambda q, k, v: attention.attend(q, k, v, "explicit")[0])) >= 2
  np.testing.assert_allclose(
    attention.attend(q, k, v, "xla")[0], attention.attend(q, k, v, "explicit")[0], rtol=1e-5, atol=1e-5
  )


def test_save_dots_keeps_the_projections_outputs():
  """remat_policy 'save_dots' keeps matmul outputs: the projections are custom-VJP calls the dot policy
  cannot see into, so their outputs are saved by name (lime_jax/model/stack.py `remat`); 'full' keeps
  none of them."""
  from lime_jax.model.stack import remat

  x = jax.random.normal(jax.random.key(5), (2, 5, 8))
  w = jax.random.normal(jax.random.key(6), (8, 12))

  def body(x, w):
    return jnp.sin(dense(x, w))

  def kept(policy):
    return [a.shape for a, _ in saved_residuals(remat(body, policy), x, w)]

  assert (2, 5, 12) in kept("save_dots")
  assert (2, 5, 12) not in kept("full")
