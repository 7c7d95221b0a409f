"""Projections as one 2-D matmul, forward and backward: the leading (batch, length, ...) dims of the
activation flattened into rows, the weight's input dims into one contraction.

Why not `einsum("btd,df->btf")`: XLA:CPU lowers the backward of a 3-D einsum inside the layer scan with
transposing copies fused into the elementwise producers (strided writes that took a third of a train
step, docs/benchmarks.md "Where a train step's time goes"); on the 2-D form it runs plain GEMMs. The
custom VJP keeps the input in its own shape as the residual, so two projections of one input (q and
k/v, gate and up) save it once, not once per reshape. On GPU and TPU XLA canonicalises every dot to
this form anyway, and the reshapes are bitcasts. The flattened rows keep the batch dim major, so a
batch-sharded activation stays row-sharded ("length" is never sharded, lime_jax/runtime/sharding.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# The name of every projection's output, which remat_policy 'save_dots' keeps (lime_jax/model/stack.py).
DENSE_OUTPUT = "dense_output"


def dense(x: jax.Array, w: jax.Array, in_dims: int = 1, *, w_transposed: bool = False) -> jax.Array:
  """Contracts the last `in_dims` dims of `x` with the first `in_dims` dims of `w` ([*in, *out]), as
  `jnp.einsum` would (result dtype: the promoted input dtypes).

  `w_transposed`: `w` is [*out, *in] (a tied embedding [V, D] read out as logits), contracted on its last
  `in_dims` dims without a copy.
  """
  w_in = w.shape[w.ndim - in_dims :] if w_transposed else w.shape[:in_dims]
  if tuple(x.shape[x.ndim - in_dims :]) != tuple(w_in):
    raise ValueError(f"dense: x {x.shape} does not contract with w {w.shape} over {in_dims} dim(s).")
  return checkpoint_name(_dense(in_dims, w_transposed, x, w), DENSE_OUTPUT)


def _matrices(in_dims: int, w_transposed: bool, x: jax.Array, w: jax.Array):
  """x as [M, K] and w as [K, N] (or [N, K] when transposed), and the output shape."""
  w_in = w.shape[w.ndim - in_dims :] if w_transposed else w.shape[:in_dims]
  w_out = w.shape[: w.ndim - in_dims] if w_transposed else w.shape[in_dims:]
  k, n = math.prod(w_in), math.prod(w_out)
  x_MK = x.reshape(-1, k)
  w_2d = w.reshape(n, k) if w_transposed else w.reshape(k, n)
  return x_MK, w_2d, (*x.shape[: x.ndim - in_dims], *w_out)


def _product(x_MK: jax.Array, w_2d: jax.Array, w_transposed: bool) -> jax.Array:
  contract = ((1,), (1,)) if w_transposed else ((1,), (0,))
  return jax.lax.dot_general(x_MK, w_2d, (contract, ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dense(in_dims: int, w_transposed: bool, x: jax.Array, w: jax.Array) -> jax.Array:
  x_MK, w_2d, out_shape = _matrices(in_dims, w_transposed, x, w)
  return _product(x_MK, w_2d, w_transposed).reshape(out_shape)


def _dense_fwd(in_dims, w_transposed, x, w):
  return _dense(in_dims, w_transposed, x, w), (x, w)


def _dense_bwd(in_dims, w_transposed, saved, dy):
  x, w = saved
  x_MK, w_2d, _ = _matrices(in_dims, w_transposed, x, w)
  dy_MN = dy.reshape(x_MK.shape[0], -1).astype(jnp.result_type(x, w))
  if w_transposed:  # y = x w^T: dx = dy w, dw = dy^T x
    dx_MK = jnp.dot(dy_MN, w_2d)
    dw_2d = jax.lax.dot_general(dy_MN, x_MK, (((0,), (0,)), ((), ())))
  else:  # y = x w: dx = dy w^T, dw = x^T dy
    dx_MK = jax.lax.dot_general(dy_MN, w_2d, (((1,), (1,)), ((), ())))
    dw_2d = jax.lax.dot_general(x_MK, dy_MN, (((0,), (0,)), ((), ())))
  return dx_MK.reshape(x.shape).astype(x.dtype), dw_2d.reshape(w.shape).astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
