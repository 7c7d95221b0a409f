"""The mix kernels of the LIMe stack: the block-wise forward mix, its grouped far part, and their
backward passes (push: by each block's vjp; pull: by the transposed static coefficients).

Shape letters (the same in lime_stack.py and layer_scan.py):
  L layers; M buffer slots (one per layer, M >= L; a static coefficient array's layer axis is padded
  to M); S source slots per block of the per-layer mix (`block_size`); G layers per group of the
  two-level schedule (`group_size`, a multiple of S); R rows of a layer's prev (the destination kv
  heads); E rows of one source slot (the source kv heads; R == E for the kv router); X values per row
  of a slot (slot size / E, e.g. B*T*2H); K stacked destination rows of one block product (S*R or G*R);
  J stacked source rows (G*E); P column chunks of a grouped product, Xp = X // P values each.

Static coefficients are W [M, R, M, E]: W[l, r, m, e] weighs row e of source slot m in row r of
layer l's prev. The per-layer mix is the router's own function (`MixFn`, `BlockMix.mix`), of any coef
shape.

Every loop is a `fori_loop` whose operands that the body updates in place ride in its carry, ended by
an optimization barrier: else XLA copies them every step, or reorders a read past an update.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp


class MixFn(Protocol):
  """A router's mix over one block of source slots (the `mix` stage of lime_stack.LayerFns), called
  with named arguments: mix(coef_block=..., buf_block=..., start=..., l=...) -> its part of prev_l.

  coef_block: layer l's coefficients (`PreFn`) sliced to the S slots from `start` along their
  source-slot axis (`BlockMix.coef_axis`); buf_block [S, *slot]: buffer slots start..start+S-1
  (`LayerFns.entry_shape`); start: the block's first slot; l: the layer (int32 scalar). Only the slots
  start + i < l may count (the others are unwritten or hold other values): the mix zeroes their
  coefficients by select, so NaN in coef's dead slots is harmless. Returns float32, in the router's
  prev shape (kv [R, B, T, 2H]; static / top_p [R, B, T, D]; dynamic [B, T, R, D]; DenseFormer
  [1, B, T, D]). With static coefficients (lime_stack.StaticCoefFn, W [L, R, M, E]) it must be the
  linear map W gives: prev.reshape(R, X) = einsum('rme,mex->rx', W[l, :, block], buf_block.reshape(S,
  E, X)) over the live slots (the forward pass mixes with this function, the backward pass pulls with W).
  """

  def __call__(
    self, *, coef_block: jax.Array, buf_block: jax.Array, start: jax.Array, l: jax.Array
  ) -> jax.Array: ...


class BlockMix(NamedTuple):
  """A router's per-block mix (`MixFn`); coef's source-slot axis is `coef_axis`; blocks hold S slots."""

  mix: MixFn
  block_size: int
  coef_axis: int


def num_blocks_below(block_size: int, l: jax.Array) -> jax.Array:
  """Number of source blocks holding slots < l."""
  return (l + block_size - 1) // block_size


def _block(bm: BlockMix, coef: jax.Array, buf: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The S source slots from `start` of coef and of the buffer."""
  coef_blk = jax.lax.dynamic_slice_in_dim(coef, start, bm.block_size, bm.coef_axis)
  return coef_blk, jax.lax.dynamic_slice_in_dim(buf, start, bm.block_size, 0)


def mix_forward(
  bm: BlockMix,
  coef: jax.Array,
  buf: jax.Array,
  l: jax.Array,
  lo: jax.Array | int = 0,
  init: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(prev_l, buf): prev_l = init + sum_{lo*S <= m < l} mix(coef[m], buf[m]), block by block (only the
  blocks holding slots < l run: work is triangular in depth). The buffer rides in the carry."""
  mix = lambda c, b, start: bm.mix(coef_block=c, buf_block=b, start=start, l=l)
  shape = jax.eval_shape(lambda c, b: mix(c, b, 0), *_block(bm, coef, buf, 0))

  def body(j, carry):
    acc, buf = carry
    start = j * bm.block_size
    return jax.lax.optimization_barrier((acc + mix(*_block(bm, coef, buf, start), start), buf))

  acc = jnp.zeros(shape.shape, shape.dtype) if init is None else init.reshape(shape.shape).astype(shape.dtype)
  return jax.lax.fori_loop(lo, num_blocks_below(bm.block_size, l), body, (acc, buf))


def push_backward(
  bm: BlockMix, coef: jax.Array, buf: jax.Array, dprev: jax.Array, dbuf: jax.Array, l: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The cotangents of `mix_forward` (lo = 0, no init) by each block's vjp: (dcoef, dbuf + d buf, buf),
  dcoef[m] = d/dcoef[m] <dprev, mix(coef[m], buf[m])>, d buf[m] = d/dbuf[m] <dprev, mix(...)> for m < l
  (zero elsewhere, blocks above l untouched). Any router; the buffer rides in the carry."""

  def body(j, carry):
    dcoef, dbuf, buf = carry
    start = j * bm.block_size
    coef_blk, buf_blk = _block(bm, coef, buf, start)
    _, pullback = jax.vjp(lambda c, b: bm.mix(coef_block=c, buf_block=b, start=start, l=l), coef_blk, buf_blk)
    dcoef_blk, dbuf_blk = pullback(dprev)
    dcoef = jax.lax.dynamic_update_slice_in_dim(dcoef, dcoef_blk, start, bm.coef_axis)
    old_blk = jax.lax.dynamic_slice_in_dim(dbuf, start, bm.block_size, 0)
    dbuf = jax.lax.dynamic_update_slice_in_dim(dbuf, old_blk + dbuf_blk.astype(dbuf.dtype), start, 0)
    return jax.lax.optimization_barrier((dcoef, dbuf, buf))

  return jax.lax.fori_loop(0, num_blocks_below(bm.block_size, l), body, (jnp.zeros_like(coef), dbuf, buf))


def num_chunks(group_size: int, X: int) -> int:
  """P, the column chunks of a group's far products: G of them (or the largest divisor of X below), so
  that each temporary (a source block, a product, an accumulator) is about one slot, not G."""
  return max(c for c in range(1, group_size + 1) if X % c == 0)


def far_forward(
  group_size: int,
  coef_MRME: jax.Array,
  out_MRX: jax.Array,
  out_start: jax.Array,
  l0: jax.Array,
  src: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """The far parts of the G layers l0 + i of a group, far_i = sum_{m < l0} W[l0 + i, :, m] src[m] ([R, X]
  each), written into out[out_start + i] in place; returns (out, src). `src` None: the sources are `out`
  itself (the forward buffer: slots < l0 are read, slots l0.. written; one array, so no copy).

  One [K, J] x [J, Xp] matmul (K = G*R, J = G*E) per block of G source slots and column chunk, so each
  slot is read once per group (not once per layer): G times the arithmetic intensity of the per-layer
  mix. All sources < l0 are live for every layer of the group, so no masking is needed."""
  G, R, E = group_size, coef_MRME.shape[1], coef_MRME.shape[3]
  X = out_MRX[0].size // R
  P = num_chunks(G, X)
  Xp = X // P
  src_MEX = None if src is None else src.reshape(src.shape[0], E, X)

  def chunk(p, carry):
    out_MRX, src_MEX = carry

    def block(j, carry):
      acc_KX, out_MRX, src_MEX = carry
      from_MEX = out_MRX if src_MEX is None else src_MEX
      c_KJ = jax.lax.dynamic_slice(coef_MRME, (l0, 0, j * G, 0), (G, R, G, E)).reshape(G * R, G * E)
      b_JX = jax.lax.dynamic_slice(from_MEX, (j * G, 0, p * Xp), (G, E, Xp)).reshape(G * E, Xp)
      acc_KX = acc_KX + jnp.dot(c_KJ.astype(b_JX.dtype), b_JX, preferred_element_type=jnp.float32)
      return jax.lax.optimization_barrier((acc_KX, out_MRX, src_MEX))

    init = (jnp.zeros((G * R, Xp), jnp.float32), out_MRX, src_MEX)
    acc_KX, out_MRX, src_MEX = jax.lax.fori_loop(0, l0 // G, block, init)
    acc_GRX = acc_KX.reshape(G, R, Xp).astype(out_MRX.dtype)
    out_MRX = jax.lax.dynamic_update_slice(out_MRX, acc_GRX, (out_start, 0, p * Xp))
    return jax.lax.optimization_barrier((out_MRX, src_MEX))

  out_MRX, src_MEX = jax.lax.fori_loop(0, P, chunk, (out_MRX, src_MEX))
  return out_MRX, None if src is None else src_MEX.reshape(src.shape)


def pull_backward(
  block_size: int,
  coef_MRME: jax.Array,
  dprev_MRX: jax.Array,
  entry_EX: jax.Array,
  l: jax.Array,
  dcoef_MRME: jax.Array,
  hi: jax.Array | int | None = None,
  init_EX: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(d buf[l] [E, X], entry, dcoef, dprev) for static coefficients, with the layers l' in
  l < l' < hi*S (`hi` blocks, default all M // S):
    d buf[l] = init + sum_{l', r} W[l', r, l, :] dprev_{l'}[r]      (the mix is linear in buf)
    dcoef[l', :, l, :] = dprev_{l'} buf[l]^T                       (written over the old value)
  in one pass over the blocks of the dprev stack, `entry_EX` being buf[l]. The block holding slot l
  is written whole: there dcoef[l', :, l, :] = 0 for l' <= l (sources >= l' are unused; the caller
  adds layer l's own-term cotangent afterwards); other entries are unchanged. The stack rides in the loop
  carry, and so does `entry_EX`: a caller that reads buf[l] from the stack and then writes the stack's
  slot l reads the returned copy, which XLA orders before the write (a read of the slot itself it
  cannot)."""
  S = block_size
  M, R = dprev_MRX.shape[:2]
  E = entry_EX.shape[0]
  entry_XE = entry_EX.T  # a loop operand, so materialised once

  def body(j, carry):
    dentry_EX, entry_EX, dcoef_MRME, dprev_MRX = carry
    start = j * S
    later_S11 = (start + jnp.arange(S) > l)[:, None, None]
    c_SRE = jax.lax.dynamic_slice(coef_MRME, (start, 0, l, 0), (S, R, 1, E))[:, :, 0, :]
    c_SRE = jnp.where(later_S11, c_SRE, jnp.zeros_like(c_SRE))
    dprev_KX = jax.lax.dynamic_slice_in_dim(dprev_MRX, start, S, 0).reshape(S * R, -1)
    c_EK = c_SRE.reshape(S * R, E).T.astype(dprev_KX.dtype)
    dentry_EX = dentry_EX + jnp.dot(c_EK, dprev_KX, preferred_element_type=jnp.float32)
    dw_KE = jnp.dot(dprev_KX, entry_XE.astype(dprev_KX.dtype), preferred_element_type=jnp.float32)
    dw_SRE = jnp.where(later_S11, dw_KE.reshape(S, R, E), 0.0).astype(dcoef_MRME.dtype)
    dcoef_MRME = jax.lax.dynamic_update_slice(dcoef_MRME, dw_SRE[:, :, None, :], (start, 0, l, 0))
    return jax.lax.optimization_barrier((dentry_EX, entry_EX, dcoef_MRME, dprev_MRX))

  dentry_EX = jnp.zeros(entry_EX.shape, jnp.float32) if init_EX is None else init_EX.astype(jnp.float32)
  hi = M // S if hi is None else hi
  return jax.lax.fori_loop((l + 1) // S, hi, body, (dentry_EX, entry_EX, dcoef_MRME, dprev_MRX))


def far_pull(
  group_size: int,
  coef_MRME: jax.Array,
  dprev_MRX: jax.Array,
  l0: jax.Array,
  dcoef_MRME: jax.Array,
  out_GRX: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(dcoef, dprev, out) for the G layers l0 + i of a group and the layers l' >= l0 + G above it:
    out[i] = sum_{l', r} W[l', r, l0 + i, :] dprev_{l'}[r]                (written into `out_GRX`)
    dcoef[l', :, l0 + i, :] += dprev_{l'} buf[l0 + i]^T
  where `dprev_MRX` is the merged stack (R == E): slots >= l0 + G hold dprev, slots l0.. still the
  entries buf[l0 + i]. One pass over the dprev blocks above the group with [J]-row products (J = G*E),
  by column chunks: the grouped counterpart of `pull_backward`."""
  G, E = group_size, coef_MRME.shape[3]
  M, R, X = dprev_MRX.shape
  P = num_chunks(G, X)
  Xp = X // P

  def chunk(p, carry):
    dcoef_MRME, dprev_MRX, out_GRX = carry
    entries_XJ = jax.lax.dynamic_slice(dprev_MRX, (l0, 0, p * Xp), (G, E, Xp)).reshape(G * E, Xp).T

    def block(j, carry):
      dent_JX, dcoef_MRME, dprev_MRX = carry
      start = j * G
      dprev_KX = jax.lax.dynamic_slice(dprev_MRX, (start, 0, p * Xp), (G, R, Xp)).reshape(G * R, Xp)
      c_KJ = jax.lax.dynamic_slice(coef_MRME, (start, 0, l0, 0), (G, R, G, E)).reshape(G * R, G * E)
      dent_JX = dent_JX + jnp.dot(c_KJ.T.astype(dprev_KX.dtype), dprev_KX, preferred_element_type=jnp.float32)
      dw_KJ = jnp.dot(dprev_KX, entries_XJ.astype(dprev_KX.dtype), preferred_element_type=jnp.float32)
      old = jax.lax.dynamic_slice(dcoef_MRME, (start, 0, l0, 0), (G, R, G, E))
      dcoef_MRME = jax.lax.dynamic_update_slice(
        dcoef_MRME, old + dw_KJ.reshape(G, R, G, E).astype(old.dtype), (start, 0, l0, 0)
      )
      return jax.lax.optimization_barrier((dent_JX, dcoef_MRME, dprev_MRX))

    init = (jnp.zeros((G * E, Xp), jnp.float32), dcoef_MRME, dprev_MRX)
    dent_JX, dcoef_MRME, dprev_MRX = jax.lax.fori_loop((l0 + G) // G, M // G, block, init)
    dent_GRX = dent_JX.reshape(G, E, Xp).astype(out_GRX.dtype)
    out_GRX = jax.lax.dynamic_update_slice(out_GRX, dent_GRX, (0, 0, p * Xp))
    return jax.lax.optimization_barrier((dcoef_MRME, dprev_MRX, out_GRX))

  return jax.lax.fori_loop(0, P, chunk, (dcoef_MRME, dprev_MRX, out_GRX))
