"""The LIMe mix kernels (lime_jax/model/lime_mix.py), each against a dense einsum of its formula.

Shapes: M = 8 slots in blocks of S = 2, groups of G = 4, R = E = 3 rows per slot, X = 10 values per row
(so a group's products run in P = 2 column chunks of 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import lime_mix

M, S, G, R, E, X = 8, 2, 4, 3, 3, 10


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _block_mix(*, coef_block: jax.Array, buf_block: jax.Array, start, l) -> jax.Array:
  """prev part of one block (a `lime_mix.MixFn`): sum_{s, e} coef[r, s, e] buf[s, e] over the live slots
  start + s < l."""
  coef_RSE, buf_SEX = coef_block, buf_block
  live_1S1 = (start + jnp.arange(coef_RSE.shape[1]) < l)[None, :, None]
  coef_RSE = jnp.where(live_1S1, coef_RSE, jnp.zeros_like(coef_RSE))
  return jnp.einsum("rse,sex->rx", coef_RSE, buf_SEX)


BM = lime_mix.BlockMix(_block_mix, S, 1)


def _dense_prev(coef_RME: jax.Array, buf_MEX: jax.Array, l: int, lo: int = 0) -> jax.Array:
  """sum_{lo*S <= m < l} coef[:, m] buf[m]."""
  m_M = np.arange(M)
  live_1M1 = jnp.asarray((m_M >= lo * S) & (m_M < l))[None, :, None]
  return jnp.einsum("rme,mex->rx", jnp.where(live_1M1, coef_RME, 0.0), buf_MEX)


def test_num_chunks():
  assert (
    lime_mix.num_chunks(4, 10) == 2 and lime_mix.num_chunks(4, 12) == 4 and lime_mix.num_chunks(1, 7) == 1
  )


@pytest.mark.parametrize("l", (0, 1, 4, 7))
def test_mix_forward(l):
  coef_RME, buf_MEX = _normal(0, (R, M, E)), _normal(1, (M, E, X))
  prev_RX, buf_out = jax.jit(lambda c, b: lime_mix.mix_forward(BM, c, b, l))(coef_RME, buf_MEX)
  np.testing.assert_allclose(prev_RX, _dense_prev(coef_RME, buf_MEX, l), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(buf_out, buf_MEX)


def test_mix_forward_from_a_block_with_init():
  coef_RME, buf_MEX, init_RX = _normal(0, (R, M, E)), _normal(1, (M, E, X)), _normal(2, (R, X))
  l, lo = 7, 2
  run = jax.jit(lambda c, b, i: lime_mix.mix_forward(BM, c, b, l, lo=lo, init=i))
  prev_RX, _ = run(coef_RME, buf_MEX, init_RX)
  np.testing.assert_allclose(prev_RX, init_RX + _dense_prev(coef_RME, buf_MEX, l, lo), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("l", (1, 5, 7))
def test_push_backward(l):
  coef_RME, buf_MEX = _normal(0, (R, M, E)), _normal(1, (M, E, X))
  dprev_RX, dbuf_MEX = _normal(2, (R, X)), _normal(3, (M, E, X))
  dcoef, dbuf, buf_out = jax.jit(lambda c, b, dp, db: lime_mix.push_backward(BM, c, b, dp, db, l))(
    coef_RME, buf_MEX, dprev_RX, dbuf_MEX
  )
  _, pullback = jax.vjp(lambda c, b: _dense_prev(c, b, l), coef_RME, buf_MEX)
  dcoef_ref, dbuf_ref = pullback(dprev_RX)
  np.testing.assert_allclose(dcoef, dcoef_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dbuf, dbuf_MEX + dbuf_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(buf_out, buf_MEX)


@pytest.mark.parametrize("l0", (0, 4))
def test_far_forward_into_a_group_array(l0):
  """far_i = sum_{m < l0} W[l0 + i, :, m] src[m], written at out[out_start + i]."""
  coef_MRME, src_MEX = _normal(0, (M, R, M, E)), _normal(1, (M, E, X))
  out_MRX = _normal(2, (M, R, X))
  out, src = jax.jit(lambda c, o, s: lime_mix.far_forward(G, c, o, 2, l0, src=s))(coef_MRME, out_MRX, src_MEX)
  far_GRX = jnp.einsum("grme,mex->grx", coef_MRME[l0 : l0 + G, :, :l0], src_MEX[:l0])
  np.testing.assert_allclose(out[2 : 2 + G], far_GRX, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[:2], out_MRX[:2])
  np.testing.assert_array_equal(out[2 + G :], out_MRX[2 + G :])
  np.testing.assert_array_equal(src, src_MEX)


def test_far_forward_in_place():
  """src None: the sources are slots < l0 of `out` itself, the far parts go to slots l0.."""
  coef_MRME, buf_MRX, l0 = _normal(0, (M, R, M, E)), _normal(1, (M, R, X)), 4
  out, src = jax.jit(lambda c, b: lime_mix.far_forward(G, c, b, l0, l0))(coef_MRME, buf_MRX)
  assert src is None
  far_GRX = jnp.einsum("grme,mex->grx", coef_MRME[l0 : l0 + G, :, :l0], buf_MRX[:l0])
  np.testing.assert_allclose(out[l0 : l0 + G], far_GRX, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[:l0], buf_MRX[:l0])


@pytest.mark.parametrize("l,hi", ((3, None), (2, None), (0, 3), (6, None)))
def test_pull_backward(l, hi):
  coef_MRME, dprev_MRX = _normal(0, (M, R, M, E)), _normal(1, (M, R, X))
  entry_EX, dcoef_MRME, init_EX = _normal(2, (E, X)), _normal(3, (M, R, M, E)), _normal(4, (E, X))
  run = jax.jit(lambda *a: lime_mix.pull_backward(S, *a, hi=hi, init_EX=init_EX), static_argnums=3)
  dentry, entry_out, dcoef, dprev = run(coef_MRME, dprev_MRX, entry_EX, l, dcoef_MRME)
  top = M if hi is None else hi * S
  later = range(l + 1, top)
  dentry_ref = init_EX + sum(jnp.einsum("re,rx->ex", coef_MRME[k, :, l], dprev_MRX[k]) for k in later)
  dcoef_ref = np.array(dcoef_MRME)
  for k in range((l + 1) // S * S, top):  # the blocks from the one holding slot l, written whole
    dcoef_ref[k, :, l] = dprev_MRX[k] @ entry_EX.T if k > l else 0.0
  np.testing.assert_allclose(dentry, dentry_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dcoef, dcoef_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(entry_out, entry_EX)
  np.testing.assert_array_equal(dprev, dprev_MRX)


@pytest.mark.parametrize("l0", (0, 4))
def test_far_pull(l0):
  """The merged stack: slots >= l0 + G hold dprev, slots l0.. the group's entries."""
  coef_MRME, dprev_MRX, dcoef_MRME = _normal(0, (M, R, M, E)), _normal(1, (M, R, X)), _normal(2, (M, R, M, E))
  out_GRX = _normal(3, (G, R, X))
  dcoef, dprev, out = jax.jit(lambda c, d, dc, o: lime_mix.far_pull(G, c, d, l0, dc, o))(
    coef_MRME, dprev_MRX, dcoef_MRME, out_GRX
  )
  above, entries_GEX = slice(l0 + G, M), dprev_MRX[l0 : l0 + G]
  out_ref = jnp.einsum("krge,krx->gex", coef_MRME[above, :, l0 : l0 + G], dprev_MRX[above])
  dw_KRGE = jnp.einsum("krx,gex->krge", dprev_MRX[above], entries_GEX)
  dcoef_ref = dcoef_MRME.at[above, :, l0 : l0 + G].add(dw_KRGE)
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dcoef, dcoef_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(dprev, dprev_MRX)
