"""The LIMe stack with memory linear in depth: one custom VJP over all layers (SPEC §2.4).

A LIMe layer l is three stages (routers in lime_jax/model/lime.py fill them in):

  coef = pre(router_l, h_l, l)                       routing coefficients over source slots
  prev = sum_{m<l} mix(coef[m], buf[m])              earlier layers, read from the write-once buffer
  h_{l+1}, buf[l] = post(layer_l, router_l, coef, prev, h_l)     the layer, adding its own term

Reverse-mode `lax.scan` would save the growing buffer at every step (O(L^2) memory). Here the forward
scan writes slot l in place and saves only each layer's input h_l, the final buffer and (per
`remat_policy`) the residuals of `post`; the backward reverse scan reads earlier layers from the final
buffer (write-once, so the values are the ones the forward used).

What a layer saves follows `remat_policy`, as for the plain stack: the forward scan runs `jax.vjp` of
the layer's `post` (wrapped by `stack.remat`) and stacks its pullback's residuals, so 'none' keeps all
of them and never recomputes the layer, 'full' keeps only the inputs (the backward recomputes the
layer, and prev from the buffer), 'save_dots' keeps the matmul outputs. Residuals the backward pass
has anyway (the layer's inputs, its buffer slot) or that depend on no per-layer input (RoPE tables,
causal masks) are not stacked: `_traced_layer` classifies them on the layer's jaxpr. With remat, an
entry that can be computed on its own (`LayerFns.entry`: the kv router's raw k/v projection) is an input
of the rematerialised layer, so the backward pass reads it from its buffer slot instead of recomputing
the projection (which the baseline, under the same policy, recomputes), and 'save_dots' does not save a
second copy of it as a matmul output.

Work is triangular in depth: the mix is a `fori_loop` with a dynamic trip count over blocks of
`block_size` source slots, so layer l reads only the blocks holding slots < l. `post` adds the
own-layer term itself, so nothing the backward pass reads is written while it is live.

Two-level schedule (`group_size` G > 1; square static mixes, i.e. the kv router): at the first layer of
each group of G, `far_forward` mixes all slots below the group for the G layers at once ([G*R]-row
matmuls: each slot is read once per group instead of once per layer, G times the arithmetic intensity
of the per-layer mix, which is memory bound on CPU) and parks each layer's far part in that layer's
own, not yet written, buffer slot; layer l then adds only the slots inside its group. The backward pass
mirrors it: `_far_pull` gives the group's slot cotangents from the layers above the group and their
router gradients, in one pass. With remat, prev needs the far parts again: by default (`keep_far`) the
forward pass keeps them (L - G slots, within the cotangent's budget, which the buffer holds), else
`far_forward` recomputes them. Each group's results wait in a G-slot array until its layers run (see
`_pull_bwd`), so grouping costs G slots (plus the kept far parts, or G more slots for the recomputed
ones, with remat); column chunks keep its temporaries about one slot each.

Backward, for routers with static coefficients (kv, static, top_p), the buffer's cotangent is pulled
rather than pushed: the mixes are linear, so d buf[l] = sum_{l'>l} W_{l'}[:, l]^T dprev_{l'}. The
backward scan keeps a stack of dprev_{l'}, and at layer l one pass over its blocks l' > l gives both
d buf[l] and the router gradients dW_{l'}[:, l] = dprev_{l'} buf[l]^T: one read of L^2/2 slots, where
pushing reads the buffer (for dW) and reads and writes its cotangent. For the kv router the stack is
the buffer itself: buf[l] is last read at layer l, which then writes dprev_l over it, so the backward
pass holds the buffer and no cotangent stack of its own (training memory: one buffer, not two).
Input-dependent routers (dynamic) push: dcoef and d buf[<l] from the vjp of each block's mix.

XLA details that matter for speed (CPU, jax 0.10): arrays that a loop reads and the step then updates
in place ride in the loop carries (else XLA copies them every step); a slot read before such a loop
and used after it rides in the carry too (else XLA copies the whole array to keep the read before the
update; an optimization barrier does not order it); and the block matmuls are written as row-major
[M, K] x [K, N] products (else XLA transposes a buffer block per product).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp

from lime_jax.model.stack import remat


@dataclasses.dataclass(frozen=True)
class LayerFns:
  """A router's three stages (module docstring) and the buffer it keeps.

  pre(router_l, h_BTD, l) -> coef; mix(coef_block, buf_block, start, l) -> prev (only slots
  start + i < l may count); post(layer_l, router_l, coef, prev, h_BTD, positions_BT, l, cache_l) ->
  (h_BTD, entry, extras); entry_shape(B, T) is one buffer slot; coef_axis is coef's source-slot axis.
  static_coef(router) -> coef of every layer [L, R, M, E] when coef does not depend on the input
  (coef_l = static_coef(router)[l] up to a reshape; a slot is E rows): then the backward pass pulls.
  entry(layer_l, h_BTD) -> the layer's entry on its own, when post(..., entry=...) can take it as an
  input: with remat, the recomputed layer then reads its buffer slot instead of recomputing it.
  """

  pre: Callable
  mix: Callable
  post: Callable
  entry_shape: Callable[[int, int], tuple[int, ...]]
  coef_axis: int
  num_slots: int
  block_size: int
  dtype: Any
  policy: str = "none"
  static_coef: Callable | None = None
  group_size: int = 1
  keep_far: bool = False  # grouped, with remat: keep the far parts for the backward pass
  entry: Callable | None = None

  def __post_init__(self):
    G, S = self.group_size, self.block_size
    if G > 1 and (self.static_coef is None or G % S or self.num_slots % G):
      raise ValueError(f"LIMe group_size={G} needs static coefficients, a multiple of block_size={S} "
                       f"and a divisor of the {self.num_slots} buffer slots.")

  def new_buffer(self, batch: int, seq: int) -> jax.Array:
    return jnp.zeros((self.num_slots, *self.entry_shape(batch, seq)), self.dtype)


def _num_blocks_below(fns: LayerFns, l: jax.Array) -> jax.Array:
  """Number of source blocks holding slots < l."""
  return (l + fns.block_size - 1) // fns.block_size


def _slice(fns: LayerFns, coef: jax.Array, buf: jax.Array, start: jax.Array):
  coef_blk = jax.lax.dynamic_slice_in_dim(coef, start, fns.block_size, fns.coef_axis)
  return coef_blk, jax.lax.dynamic_slice_in_dim(buf, start, fns.block_size, 0)


def mix_forward(fns: LayerFns, coef: jax.Array, buf: jax.Array, l: jax.Array, lo: jax.Array | int = 0,
                init: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(prev_l, buf): `init` plus the sum over source slots m in [lo * block_size, l), block by block.
  The buffer rides in the carry."""
  shape = jax.eval_shape(lambda c, b: fns.mix(c, b, 0, l), *_slice(fns, coef, buf, 0))

  def body(j, carry):
    acc, buf = carry
    start = j * fns.block_size
    return jax.lax.optimization_barrier((acc + fns.mix(*_slice(fns, coef, buf, start), start, l), buf))

  acc = jnp.zeros(shape.shape, shape.dtype) if init is None else init.reshape(shape.shape).astype(shape.dtype)
  return jax.lax.fori_loop(lo, _num_blocks_below(fns, l), body, (acc, buf))


def _num_chunks(fns: LayerFns, X: int) -> int:
  """Column chunks of a group's far products: G of them (or the largest divisor of X below), so that
  each temporary (a source block, a product, an accumulator) is about one slot, not G."""
  return max(c for c in range(1, fns.group_size + 1) if X % c == 0)


def far_forward(fns: LayerFns, coef_MRME: jax.Array, out_MRX: jax.Array, out_start: jax.Array, l0: jax.Array,
                src: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """Writes far_i = sum_{m < l0} W_{l0+i}[:, m] src[m] for the G layers l0 + i of a group into
  out[out_start + i] ([R, X] each) in place; returns (out, src). `src` None: the sources are `out`
  itself (the forward buffer: slots < l0 are read, slots l0.. written; one array, so no copy).

  One [G*R, G*E] x [G*E, Xc] matmul per block of G source slots and column chunk, so each slot is read
  once per group (not once per layer): G times the arithmetic intensity of the per-layer mix. All
  sources < l0 are live for every layer of the group, so no masking is needed."""
  G, R, E = fns.group_size, coef_MRME.shape[1], coef_MRME.shape[3]
  X = out_MRX[0].size // R
  C = _num_chunks(fns, X)
  Xc = X // C
  src_MEX = None if src is None else src.reshape(src.shape[0], E, X)

  def chunk(k, carry):
    out_MRX, src_MEX = carry

    def block(j, carry):
      acc_KX, out_MRX, src_MEX = carry
      from_MEX = out_MRX if src_MEX is None else src_MEX
      c_KJ = jax.lax.dynamic_slice(coef_MRME, (l0, 0, j * G, 0), (G, R, G, E)).reshape(G * R, G * E)
      b_JX = jax.lax.dynamic_slice(from_MEX, (j * G, 0, k * Xc), (G, E, Xc)).reshape(G * E, Xc)
      acc_KX = acc_KX + jnp.dot(c_KJ.astype(b_JX.dtype), b_JX, preferred_element_type=jnp.float32)
      return jax.lax.optimization_barrier((acc_KX, out_MRX, src_MEX))

    init = (jnp.zeros((G * R, Xc), jnp.float32), out_MRX, src_MEX)
    acc_KX, out_MRX, src_MEX = jax.lax.fori_loop(0, l0 // G, block, init)
    acc_GRX = acc_KX.reshape(G, R, Xc).astype(out_MRX.dtype)
    out_MRX = jax.lax.dynamic_update_slice(out_MRX, acc_GRX, (out_start, 0, k * Xc))
    return jax.lax.optimization_barrier((out_MRX, src_MEX))

  out_MRX, src_MEX = jax.lax.fori_loop(0, C, chunk, (out_MRX, src_MEX))
  return out_MRX, None if src is None else src_MEX.reshape(src.shape)


def _push_backward(fns: LayerFns, coef: jax.Array, buf: jax.Array, dprev: jax.Array, dbuf: jax.Array,
                   l: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cotangents of `mix_forward` by each block's vjp: (dcoef, dbuf + this layer's part, buf)."""

  def body(j, carry):
    dcoef, dbuf, buf = carry
    start = j * fns.block_size
    coef_blk, buf_blk = _slice(fns, coef, buf, start)
    _, pullback = jax.vjp(lambda c, b: fns.mix(c, b, start, l), coef_blk, buf_blk)
    dcoef_blk, dbuf_blk = pullback(dprev)
    dcoef = jax.lax.dynamic_update_slice_in_dim(dcoef, dcoef_blk, start, fns.coef_axis)
    old_blk = jax.lax.dynamic_slice_in_dim(dbuf, start, fns.block_size, 0)
    dbuf = jax.lax.dynamic_update_slice_in_dim(dbuf, old_blk + dbuf_blk.astype(dbuf.dtype), start, 0)
    return jax.lax.optimization_barrier((dcoef, dbuf, buf))

  return jax.lax.fori_loop(0, _num_blocks_below(fns, l), body, (jnp.zeros_like(coef), dbuf, buf))


def _pull_backward(S: int, coef_MRME: jax.Array, dprev_MRX: jax.Array, entry_EX: jax.Array, l: jax.Array,
                   dcoef_MRME: jax.Array, hi: jax.Array | int | None = None,
                   init_EX: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(d buf[l] [E, X], entry, dcoef, dprev): d buf[l] = init + sum_{l < l' < hi*S, r} W_{l'}[r, l, :]
  dprev_{l'}[r], and dW_{l'}[:, l, :] = dprev_{l'} buf[l]^T for those l' written into dcoef, in one pass
  over the blocks of the dprev stack (up to block `hi`, default all). The stack rides in the loop carry,
  and so does `entry_EX`: a caller that reads buf[l] from the stack and then writes the stack's slot l
  reads the returned copy, which XLA orders before the write (a read of the slot itself it cannot)."""
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


def _far_pull(fns: LayerFns, coef_MRME: jax.Array, dprev_MRX: jax.Array, l0: jax.Array, dcoef_MRME: jax.Array,
              out_GRX: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(dcoef, dprev, out): the part of the slot cotangents of the group's G layers l0.. from the layers
  l' >= l0 + G above it, sum_{l', r} W_{l'}[r, l, :] dprev_{l'}[r], written into `out_GRX`; and their
  router gradients dW_{l'}[:, l0:l0+G] = dprev_{l'} buf[l0:l0+G]^T added into dcoef. One pass over the
  dprev blocks above the group with [G*E]-row products, by column chunks (the grouped counterpart of
  `_pull_backward`). `dprev_MRX` is the merged stack of `_pull_bwd`: slots l0.. still hold the entries."""
  G, E = fns.group_size, coef_MRME.shape[3]
  M, R, X = dprev_MRX.shape
  C = _num_chunks(fns, X)
  Xc = X // C

  def chunk(k, carry):
    dcoef_MRME, dprev_MRX, out_GRX = carry
    entries_XJ = jax.lax.dynamic_slice(dprev_MRX, (l0, 0, k * Xc), (G, E, Xc)).reshape(G * E, Xc).T

    def block(j, carry):
      dent_JX, dcoef_MRME, dprev_MRX = carry
      start = j * G
      dprev_KX = jax.lax.dynamic_slice(dprev_MRX, (start, 0, k * Xc), (G, R, Xc)).reshape(G * R, Xc)
      c_KJ = jax.lax.dynamic_slice(coef_MRME, (start, 0, l0, 0), (G, R, G, E)).reshape(G * R, G * E)
      dent_JX = dent_JX + jnp.dot(c_KJ.T.astype(dprev_KX.dtype), dprev_KX, preferred_element_type=jnp.float32)
      dw_KJ = jnp.dot(dprev_KX, entries_XJ.astype(dprev_KX.dtype), preferred_element_type=jnp.float32)
      old = jax.lax.dynamic_slice(dcoef_MRME, (start, 0, l0, 0), (G, R, G, E))
      dcoef_MRME = jax.lax.dynamic_update_slice(dcoef_MRME, old + dw_KJ.reshape(G, R, G, E).astype(old.dtype),
                                                (start, 0, l0, 0))
      return jax.lax.optimization_barrier((dent_JX, dcoef_MRME, dprev_MRX))

    init = (jnp.zeros((G * E, Xc), jnp.float32), dcoef_MRME, dprev_MRX)
    dent_JX, dcoef_MRME, dprev_MRX = jax.lax.fori_loop((l0 + G) // G, M // G, block, init)
    dent_GRX = dent_JX.reshape(G, E, Xc).astype(out_GRX.dtype)
    out_GRX = jax.lax.dynamic_update_slice(out_GRX, dent_GRX, (0, 0, k * Xc))
    return jax.lax.optimization_barrier((dcoef_MRME, dprev_MRX, out_GRX))

  return jax.lax.fori_loop(0, C, chunk, (dcoef_MRME, dprev_MRX, out_GRX))


def _known(params_l, router_l, coef, prev, h_BTD, entry, l) -> list:
  """Values the backward pass has at layer l without saving them: the layer's inputs, coef (from
  `pre`), prev (recomputed from the final buffer) and entry (its slot), the last two only if needed."""
  return [*jax.tree.leaves((params_l, router_l)), coef, prev, h_BTD, entry, l]


_PREV, _ENTRY = -4, -2  # positions of prev and entry in `_known`


def _varying_outputs(jaxpr, varying_in: list[bool]) -> list[bool]:
  """Which outputs of `jaxpr` depend on a varying input. Recurses into call-like equations whose
  sub-jaxpr maps inputs/outputs one to one (jit, checkpoint, custom_jvp); any other equation with a
  varying input makes all its outputs varying (conservative, so never wrong)."""
  varying = {v for v, m in zip(jaxpr.invars, varying_in) if m}
  is_varying = lambda v: isinstance(v, jex_core.Var) and v in varying
  for eqn in jaxpr.eqns:
    eqn_in = [is_varying(v) for v in eqn.invars]
    if not any(eqn_in):
      continue
    sub = next((eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params), None)
    sub = getattr(sub, "jaxpr", sub)
    if (isinstance(sub, jex_core.Jaxpr) and len(sub.invars) == len(eqn.invars)
        and len(sub.outvars) == len(eqn.outvars)):
      eqn_out = _varying_outputs(sub, eqn_in)
    else:
      eqn_out = [True] * len(eqn.outvars)
    varying.update(v for v, m in zip(eqn.outvars, eqn_out) if m)
  return [is_varying(v) for v in jaxpr.outvars]


class _Layout:
  """Where each leaf of a layer's pullback comes from in the backward pass (static Python data):
  ('known', i) an entry of `_known`, ('invariant', i) computed once (RoPE tables, causal masks: they
  depend on no per-layer input), ('saved', i) stacked over layers."""

  def __init__(self, treedef, slots: list[tuple[str, int]], num_known: int):
    self.treedef, self.slots = treedef, slots
    self.needs_prev = ("known", num_known + _PREV) in slots
    self.needs_entry = ("known", num_known + _ENTRY) in slots


jax.tree_util.register_pytree_node(_Layout, lambda x: ((), x), lambda x, _: x)


def _forward_prev(fns: LayerFns, coef: jax.Array, buf: jax.Array, l: jax.Array) -> tuple[jax.Array, jax.Array]:
  """prev_l in the forward pass. Grouped: slot l still holds the group's far part (`far_forward`
  wrote it at the group's first layer; layer l overwrites it with its entry), plus the near slots."""
  if fns.group_size == 1:
    return mix_forward(fns, coef, buf, l)
  l0 = l - l % fns.group_size
  far = jax.lax.dynamic_index_in_dim(buf, l, 0, keepdims=False)
  return mix_forward(fns, coef, buf, l, lo=l0 // fns.block_size, init=far)


def _write_far(fns: LayerFns, coef_MRME: jax.Array, buf: jax.Array, l0: jax.Array) -> jax.Array:
  """Writes the far parts of the G layers from l0 into their (not yet written) buffer slots."""
  R, E = coef_MRME.shape[1], coef_MRME.shape[3]
  if R != E:
    raise ValueError("LIMe grouping needs prev and a buffer slot of one shape (the kv router).")
  buf_MRX = buf.reshape(buf.shape[0], R, -1)
  out_MRX, _ = far_forward(fns, coef_MRME, buf_MRX, l0, l0)
  return out_MRX.reshape(buf.shape)


def _static_coef_MRME(fns: LayerFns, router: Any) -> jax.Array:
  """Every layer's static coefficients [M, R, M, E] (layer axis zero-padded to M slots)."""
  coef_LRME = fns.static_coef(router)
  return jnp.pad(coef_LRME, [(0, fns.num_slots - coef_LRME.shape[0]), (0, 0), (0, 0), (0, 0)])


def _layer_scan(fns: LayerFns, layer_body: Callable, carry: Any, xs: Any,
                reverse: bool = False, group_body: Callable | None = None) -> tuple[Any, Any]:
  """`lax.scan` of `layer_body` over layers (`xs`' leading axis). Grouped (group_size G > 1), the layer
  that opens a group (forward: its first; reverse: its last) first runs `group_body(carry, l0)` under a
  `lax.cond`. One flat scan, not a scan over groups of an inner scan: nested scans copy each group's
  stacked outputs (saved residuals, per-layer gradients) into the outer stack, G layers' worth of
  extra memory."""
  G = fns.group_size
  if G == 1 or group_body is None:
    return jax.lax.scan(layer_body, carry, xs, reverse=reverse)
  L = jax.tree.leaves(xs)[0].shape[0]
  if L % G:
    raise ValueError(f"LIMe group_size={G} must divide num_layers={L}.")
  opener = G - 1 if reverse else 0

  def body(carry, xs_l):
    l = xs_l[1]
    carry = jax.lax.cond(l % G == opener, lambda c: group_body(c, l - l % G), lambda c: c, carry)
    return layer_body(carry, xs_l[0])

  return jax.lax.scan(body, carry, (xs, jnp.arange(L)), reverse=reverse)


def _layer_step(fns: LayerFns, positions_BT: jax.Array, pullback_tree: dict) -> Callable:
  """One forward layer with its pullback: (h, buf, params_l, router_l, l) -> (h_next, buf, coef, prev,
  entry, pullback leaves). The pullback (a pytree) holds exactly what the remat policy saves."""

  def step(h_BTD, buf, params_l, router_l, l):
    coef = fns.pre(router_l, h_BTD, l)
    prev, buf = _forward_prev(fns, coef, buf, l)
    # With remat, an entry computed on its own is an input of the rematerialised layer, so its
    # recomputation in the backward pass reads the buffer slot (a known value) instead.
    entry_in = None if fns.entry is None or fns.policy == "none" else fns.entry(params_l, h_BTD)

    def post(params_l, router_l, coef, prev, h_BTD, entry_in):
      kw = {} if entry_in is None else {"entry": entry_in}
      h_BTD, entry, _ = fns.post(params_l, router_l, coef, prev, h_BTD, positions_BT, l, None, **kw)
      return h_BTD, entry

    (h_next, entry), pullback = jax.vjp(lambda *args: remat(post, fns.policy)(*args, entry_in),
                                        params_l, router_l, coef, prev, h_BTD)
    entry = entry if entry_in is None else entry_in  # the same value; this variable is the known one
    leaves, pullback_tree["treedef"] = jax.tree.flatten(pullback)
    buf = jax.lax.dynamic_update_index_in_dim(buf, entry.astype(buf.dtype), l, 0)
    return h_next, buf, coef, prev, entry, leaves

  return step


def _traced_layer(fns, layers, router, h_BTD, buf, positions_BT):
  """Traces `_layer_step` once into a jaxpr and classifies every pullback leaf by its variable (exact:
  the scan then runs this very jaxpr). Returns (step jaxpr, layout, layer-invariant leaf values)."""
  tree = {}
  example = (h_BTD, buf, *jax.tree.map(lambda x: x[0], (layers, router)), jnp.zeros((), jnp.int32))
  closed = jax.make_jaxpr(_layer_step(fns, positions_BT, tree))(*example)
  jaxpr = closed.jaxpr
  n_params, n_router = len(jax.tree.leaves(layers)), len(jax.tree.leaves(router))
  h_var, params_vars = jaxpr.invars[0], jaxpr.invars[2:2 + n_params]
  router_vars, l_var = jaxpr.invars[2 + n_params:2 + n_params + n_router], jaxpr.invars[-1]
  coef_var, prev_var, entry_var = jaxpr.outvars[2:5]
  known_vars = [*params_vars, *router_vars, coef_var, prev_var, h_var, entry_var, l_var]
  leaf_vars = jaxpr.outvars[5:]
  is_varying = _varying_outputs(jaxpr, [True] * len(jaxpr.invars))[5:]
  slots, invariant_idx, num_saved = [], [], 0
  for i, (v, varying) in enumerate(zip(leaf_vars, is_varying)):
    k = next((k for k, u in enumerate(known_vars) if isinstance(v, jex_core.Var) and v is u), None)
    if k is not None:
      slots.append(("known", k))
    elif not varying:
      slots.append(("invariant", len(invariant_idx)))
      invariant_idx.append(i)
    else:
      slots.append(("saved", num_saved))
      num_saved += 1
  outs = jex_core.jaxpr_as_fun(closed)(*jax.tree.leaves(example))
  invariant = [outs[5 + i] for i in invariant_idx]  # depend on no input: any layer's values will do
  return closed, _Layout(tree["treedef"], slots, len(known_vars)), invariant


def _scan_forward(fns: LayerFns, layers: Any, router: Any, h_BTD: jax.Array, positions_BT: jax.Array,
                  with_residuals: bool):
  """Forward scan writing buffer slot l at layer l. With residuals, also returns every layer's input,
  the layer-invariant pullback leaves and the stacked saved ones (see `_Layout`)."""
  L, G = jax.tree.leaves(layers)[0].shape[0], fns.group_size
  buf = fns.new_buffer(h_BTD.shape[0], h_BTD.shape[1])
  group_body = None
  if G > 1:
    coef_MRME = _static_coef_MRME(fns, router)

    def group_body(carry, l0):
      """Parks the far parts of the group's layers in their slots; with `far` (the carry's last
      entry, not None), also keeps them for the backward pass: [L - G, *slot], those of layers G.."""
      h_BTD, buf, far = carry
      buf = _write_far(fns, coef_MRME, buf, l0)
      if far is not None:  # l0 = 0: the start clamps to 0 and writes zeros there, which group 1 overwrites
        group_BX = jax.lax.dynamic_slice_in_dim(buf, l0, G, 0)
        far = jax.lax.dynamic_update_slice_in_dim(far, group_BX, jnp.maximum(l0 - G, 0), 0)
      return h_BTD, buf, far

  if not with_residuals:
    def plain_body(carry, xs):
      h_BTD, buf, _ = carry
      params_l, router_l, l = xs
      coef = fns.pre(router_l, h_BTD, l)
      prev, buf = _forward_prev(fns, coef, buf, l)
      h_BTD, entry, _ = fns.post(params_l, router_l, coef, prev, h_BTD, positions_BT, l, None)
      return (h_BTD, jax.lax.dynamic_update_index_in_dim(buf, entry.astype(buf.dtype), l, 0), None), None

    (h_BTD, _, _), _ = _layer_scan(fns, plain_body, (h_BTD, buf, None), (layers, router, jnp.arange(L)),
                                   group_body=group_body)
    return h_BTD, None

  closed, layout, invariant = _traced_layer(fns, layers, router, h_BTD, buf, positions_BT)
  step = jex_core.jaxpr_as_fun(closed)
  saved_idx = [i for i, (kind, _) in enumerate(layout.slots) if kind == "saved"]

  keeps_far = G > 1 and layout.needs_prev and fns.keep_far  # the first group's far parts are zero
  far = jnp.zeros((L - G, *buf.shape[1:]), buf.dtype) if keeps_far else None

  def body(carry, xs):
    h_BTD, buf, far = carry
    outs = step(*jax.tree.leaves((h_BTD, buf, *xs)))
    return (outs[0], outs[1], far), (h_BTD, [outs[5 + i] for i in saved_idx])

  (h_BTD, buf, far), (hs_LBTD, saved) = _layer_scan(fns, body, (h_BTD, buf, far),
                                                    (layers, router, jnp.arange(L)), group_body=group_body)
  return h_BTD, (buf, far, hs_LBTD, invariant, saved, layout)


def buffer_scan(fns: LayerFns, layers: Any, router: Any, h: jax.Array, positions_BT: jax.Array,
                cache: Any, collected: Callable) -> tuple[jax.Array, Any, Any]:
  """The stages of `fns` as a plain `lax.scan` with the buffer in the carry: for decoding (`cache`),
  per-layer collections and the O(L^2)-memory reference. Exact, and differentiable (reverse mode then
  saves the buffer at every layer). `collected(extras, h_next, coef)` gives a layer's collections.
  Returns (last residual state, stacked collections, stacked caches)."""

  def body(carry, xs):
    params_l, router_l, l, cache_l = xs
    coef = fns.pre(router_l, carry["h"], l)
    prev = fns.mix(coef, carry["buf"], 0, l)
    h_next, entry, extras = fns.post(params_l, router_l, coef, prev, carry["h"], positions_BT, l, cache_l)
    buf = jax.lax.dynamic_update_index_in_dim(carry["buf"], entry.astype(carry["buf"].dtype), l, 0)
    ys = {"collected": collected(extras, h_next, coef), "cache": extras["cache"]}
    return {"h": h_next, "buf": buf}, ys

  carry = {"h": h, "buf": fns.new_buffer(h.shape[0], h.shape[1])}
  xs = (layers, router, jnp.arange(jax.tree.leaves(layers)[0].shape[0]), cache)
  carry, ys = jax.lax.scan(remat(body, fns.policy), carry, xs)
  return carry["h"], ys["collected"], ys["cache"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lime_stack(fns: LayerFns, layers: Any, router: Any, h_BTD: jax.Array,
               positions_BT: jax.Array) -> jax.Array:
  """Runs all layers; returns the last residual stream. Differentiable with memory linear in depth."""
  return _scan_forward(fns, layers, router, h_BTD, positions_BT, False)[0]


def _lime_stack_fwd(fns, layers, router, h_BTD, positions_BT):
  h_out_BTD, residuals = _scan_forward(fns, layers, router, h_BTD, positions_BT, True)
  return h_out_BTD, (layers, router, *residuals)  # positions: only in the invariant leaves


def _post_pullback(layout: _Layout, invariant: list, saved_l: list, known: list) -> Callable:
  sources = {"known": known, "invariant": invariant, "saved": saved_l}
  return jax.tree.unflatten(layout.treedef, [sources[kind][i] for kind, i in layout.slots])


def _lime_stack_bwd(fns, residuals, dh_out_BTD):
  if fns.static_coef is None:
    return _push_bwd(fns, residuals, dh_out_BTD)
  return _pull_bwd(fns, residuals, dh_out_BTD)


def _push_bwd(fns, residuals, dh_out_BTD):
  """Backward scan pushing each layer's mix cotangent into the buffer cotangent (any router)."""
  layers, router, buf, _, hs_LBTD, invariant, saved, layout = residuals
  L = hs_LBTD.shape[0]

  def body(carry, xs):
    dh_BTD, dentry, dbuf, buf = carry
    params_l, router_l, l, h_BTD, saved_l = xs
    coef, pre_pullback = jax.vjp(lambda r, h: fns.pre(r, h, l), router_l, h_BTD)
    prev = entry = None
    if layout.needs_prev:
      prev, buf = mix_forward(fns, coef, buf, l)
    if layout.needs_entry:
      entry = jax.lax.dynamic_index_in_dim(buf, l, 0, keepdims=False)
    known = _known(params_l, router_l, coef, prev, h_BTD, entry, l)
    post_pullback = _post_pullback(layout, invariant, saved_l, known)
    dparams, drouter, dcoef, dprev, dh_post_BTD = post_pullback((dh_BTD, dentry))
    dcoef_mix, dbuf, buf = _push_backward(fns, coef, buf, dprev, dbuf, l)
    drouter_pre, dh_pre_BTD = pre_pullback(dcoef + dcoef_mix)
    drouter = jax.tree.map(jnp.add, drouter, drouter_pre)
    # The next layer's slot cotangent is complete now; reading it here (not at the start of the next
    # step, where XLA fuses the read past the in-place update) avoids copying dbuf every step.
    dentry = jax.lax.dynamic_index_in_dim(dbuf, jnp.maximum(l - 1, 0), 0, keepdims=False)
    return (dh_post_BTD + dh_pre_BTD, dentry, dbuf, buf), (dparams, drouter)

  carry = (dh_out_BTD, jnp.zeros_like(buf[0]), jnp.zeros_like(buf), buf)
  xs = (layers, router, jnp.arange(L), hs_LBTD, saved)
  (dh_BTD, _, _, _), (dlayers, drouter) = jax.lax.scan(body, carry, xs, reverse=True)
  return dlayers, drouter, dh_BTD, None


def _pull_bwd(fns, residuals, dh_out_BTD):
  """Backward scan pulling the buffer cotangent from a stack of dprev (static coefficients).

  The stack is the buffer itself when a dprev slot is the size of a buffer slot (the kv router): layer
  l's entry is last read at layer l (the pulls of its cotangent and router gradients, and the
  recomputed prev of the layers above it, come before), so layer l then writes dprev_l over it. Slots
  above the current layer hold dprev, the others entries: the cotangent costs no memory of its own.
  (Otherwise, v1 static routers with several heads, the stack is a separate array.)

  Grouped (G > 1: the kv router, so merged; `_write_far` rejects the rest in the forward), each group
  starts (at its top layer) with `_far_pull` and, when the layers must recompute prev (remat) and the
  forward pass did not keep their far parts (`LayerFns.keep_far`), with `far_forward`. Their results
  wait in two G-slot arrays until the group's layers run."""
  layers, router, buf, kept_far, hs_LBTD, invariant, saved, layout = residuals
  L, M, S, G = hs_LBTD.shape[0], fns.num_slots, fns.block_size, fns.group_size
  coef_LRME, coef_pullback = jax.vjp(fns.static_coef, router)
  coef_MRME = jnp.pad(coef_LRME, [(0, M - L), (0, 0), (0, 0), (0, 0)])
  R, E = coef_LRME.shape[1], coef_LRME.shape[-1]
  X = buf[0].size // E
  merged = R == E
  buf_shape = buf.shape
  recomputes_far = layout.needs_prev and kept_far is None

  def entries(dprev_MRX, buf):
    return dprev_MRX.reshape(buf_shape) if merged else buf

  def with_entries(dprev_MRX, buf, src):
    return (src.reshape(dprev_MRX.shape), buf) if merged else (dprev_MRX, src)

  def group_body(carry, l0):
    dh_BTD, dprev_MRX, dcoef_MRME, buf, pulled_GRX, far_GRX = carry
    if recomputes_far:
      far_GRX, src = far_forward(fns, coef_MRME, far_GRX, 0, l0, src=entries(dprev_MRX, buf))
      dprev_MRX, buf = with_entries(dprev_MRX, buf, src)
    dcoef_MRME, dprev_MRX, pulled_GRX = _far_pull(fns, coef_MRME, dprev_MRX, l0, dcoef_MRME, pulled_GRX)
    return dh_BTD, dprev_MRX, dcoef_MRME, buf, pulled_GRX, far_GRX

  def body(carry, xs):
    dh_BTD, dprev_MRX, dcoef_MRME, buf, pulled_GRX, far_GRX = carry
    params_l, router_l, l, h_BTD, saved_l = xs
    coef = fns.pre(router_l, h_BTD, l)
    prev = dentry_init_EX = None
    lo, hi = 0, M // S
    if G > 1:
      l0 = l - l % G
      lo, hi = l0 // S, (l0 + G) // S
      dentry_init_EX = jax.lax.dynamic_index_in_dim(pulled_GRX, l - l0, 0, keepdims=False)
    if layout.needs_prev:
      far = None
      if G > 1 and kept_far is not None:  # kept by the forward pass (layers G..); zero in the first group
        far = jax.lax.dynamic_index_in_dim(kept_far, jnp.maximum(l - G, 0), 0, keepdims=False)
        far = jnp.where(l >= G, far, jnp.zeros_like(far))
      elif G > 1:
        far = jax.lax.dynamic_index_in_dim(far_GRX, l - l0, 0, keepdims=False)  # zero in the first group
      prev, src = mix_forward(fns, coef, entries(dprev_MRX, buf), l, lo=lo, init=far)
      dprev_MRX, buf = with_entries(dprev_MRX, buf, src)
    entry = jax.lax.dynamic_index_in_dim(entries(dprev_MRX, buf), l, 0, keepdims=False)
    dentry_EX, entry_EX, dcoef_MRME, dprev_MRX = _pull_backward(S, coef_MRME, dprev_MRX, entry.reshape(E, -1),
                                                                l, dcoef_MRME, hi=hi, init_EX=dentry_init_EX)
    entry = entry_EX.reshape(entry.shape)  # the loop's copy: no later read of slot l, which gets dprev_l
    known = _known(params_l, router_l, coef, prev, h_BTD, entry, l)
    post_pullback = _post_pullback(layout, invariant, saved_l, known)
    dentry = dentry_EX.reshape(entry.shape).astype(entry.dtype)
    dparams, drouter, dcoef, dprev, dh_BTD = post_pullback((dh_BTD, dentry))
    # coef is static_coef(router)[l]: its cotangent joins the pulled ones, mapped back at the end.
    dcoef_own = dcoef.reshape(coef_LRME.shape[1:]).astype(dcoef_MRME.dtype)
    own = jax.lax.dynamic_index_in_dim(dcoef_MRME, l, 0, keepdims=False) + dcoef_own
    dcoef_MRME = jax.lax.dynamic_update_index_in_dim(dcoef_MRME, own, l, 0)
    dprev_RX = dprev.reshape(dprev.shape[0], -1).astype(dprev_MRX.dtype)
    dprev_MRX = jax.lax.dynamic_update_index_in_dim(dprev_MRX, dprev_RX, l, 0)  # merged: over entry l
    return (dh_BTD, dprev_MRX, dcoef_MRME, buf, pulled_GRX, far_GRX), (dparams, drouter)

  park = lambda needed: jnp.zeros((G, R, X), fns.dtype) if G > 1 and needed else None
  if merged:
    dprev_MRX, buf = buf.reshape(M, R, X), None
  else:
    dprev_MRX = jnp.zeros((M, R, X), fns.dtype)  # the buffer's dtype
  carry = (dh_out_BTD, dprev_MRX, jnp.zeros_like(coef_MRME), buf, park(True), park(recomputes_far))
  xs = (layers, router, jnp.arange(L), hs_LBTD, saved)
  (dh_BTD, _, dcoef_MRME, *_), (dlayers, drouter) = _layer_scan(fns, body, carry, xs, reverse=True,
                                                                group_body=group_body)
  (drouter_coef,) = coef_pullback(dcoef_MRME[:L])
  return dlayers, jax.tree.map(jnp.add, drouter, drouter_coef), dh_BTD, None


lime_stack.defvjp(_lime_stack_fwd, _lime_stack_bwd)
