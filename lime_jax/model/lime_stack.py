"""The LIMe stack with memory linear in depth: one custom VJP over all layers (docs/methods.md §2.4).

Shape letters (the same in lime_mix.py and layer_scan.py): B batch, T tokens, D model width; L layers;
M buffer slots (M >= L); S source slots per block (`block_size`); G layers per group (`group_size`);
R rows of a layer's prev (destination kv heads); E rows of a source slot (source kv heads); X values
per row of a slot; K stacked destination rows of a block product; P column chunks.

A LIMe layer l is three stages (`LayerFns`; the routers of lime_jax/model/routers/ and DenseFormer,
lime_jax/model/denseformer.py, fill them in; every stage is a Protocol called with named arguments):

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
has anyway (`Known`: the layer's inputs, its buffer slot, the shared `LayerTables` of positions, RoPE
and mask, lime_jax/model/tables.py) or that depend on no per-layer input (what attention derives from
the mask or from constants) are not stacked: layer_scan.trace_step sorts them. With
remat, an entry that can be computed on its own (`LayerFns.entry`: the kv router's raw k/v projection)
is an input of the rematerialised layer, so the backward pass reads it from its buffer slot instead of
recomputing the projection (which the baseline, under the same policy, recomputes), and 'save_dots'
does not save a second copy of it as a matmul output.

Work is triangular in depth: the mix (lime_mix.mix_forward) is a `fori_loop` with a dynamic trip count
over blocks of S source slots, so layer l reads only the blocks holding slots < l. `post` adds the
own-layer term itself, so nothing the backward pass reads is written while it is live.

Two-level schedule (G > 1; square static mixes, i.e. the kv router): at the first layer of each group
of G, `lime_mix.far_forward` mixes all slots below the group for the G layers at once ([G*R]-row
matmuls: each slot is read once per group instead of once per layer, G times the arithmetic intensity
of the per-layer mix, which is memory bound on CPU) and parks each layer's far part in that layer's
own, not yet written, buffer slot; layer l then adds only the slots inside its group. The backward pass
mirrors it: `lime_mix.far_pull` gives the group's slot cotangents from the layers above the group and
their router gradients, in one pass. With remat, prev needs the far parts again: by default
(`keep_far`) the forward pass keeps them (L - G slots, within the cotangent's budget, which the buffer
holds), else `far_forward` recomputes them. Each group's results wait in a G-slot array until its
layers run (see `_pull_bwd`), so grouping costs G slots (plus the kept far parts, or G more slots for
the recomputed ones, with remat); column chunks keep its temporaries about one slot each.

Backward, for routers with static coefficients (kv, static, top_p), the buffer's cotangent is pulled
rather than pushed: the mixes are linear, so d buf[l] = sum_{l'>l} W_{l'}[:, l]^T dprev_{l'}. The
backward scan keeps a stack of dprev_{l'}, and at layer l one pass over its blocks l' > l gives both
d buf[l] and the router gradients dW_{l'}[:, l] = dprev_{l'} buf[l]^T: one read of L^2/2 slots, where
pushing reads the buffer (for dW) and reads and writes its cotangent. For the kv router the stack is
the buffer itself: buf[l] is last read at layer l, which then writes dprev_l over it, so the backward
pass holds the buffer and no cotangent stack of its own (training memory: one buffer, not two).
Input-dependent routers (dynamic) push: dcoef and d buf[<l] from the vjp of each block's mix.

XLA details that matter for speed (CPU): arrays that a loop reads and the step then updates in place
ride in the loop carries (else XLA copies them every step); a slot read before such a loop and used
after it rides in the carry too (else XLA copies the whole array to keep the read before the update;
an optimization barrier does not order it); and the block matmuls are written as row-major
[M, K] x [K, N] products (else XLA transposes a buffer block per product).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from lime_jax.model import lime_mix, taps
from lime_jax.model.layer_scan import PullbackLayout, TracedStep, scan_layers, trace_step
from lime_jax.model.lime_mix import MixFn
from lime_jax.model.stack import remat
from lime_jax.model.tables import LayerTables

if TYPE_CHECKING:
  from lime_jax.model.model_config import ModelConfig


# ------------------------------------------------------------------------------ the stage contract
# Shapes that depend on the router are written per router below: kv (v2), static / top_p, dynamic (v1,
# lime_jax/model/routers/) and DenseFormer's DWA; a slot is E rows of X values (kv: E = R, X = B*T*2H;
# the others E = 1, X = B*T*D).


class PreFn(Protocol):
  """pre(router_l=..., h=..., l=...) -> coef: layer l's routing coefficients over the M source slots.

  router_l: layer l's router arrays (`StackStages.stacked`, sliced at l); h: the layer's input state
  (h_BTD [B, T, D]; DenseFormer [B, T, 2, D], the pair (Y_l, X_l)); l: the layer (int32 scalar).
  coef's source-slot axis is `LayerFns.coef_axis`: kv [R, M, R]; static / top_p [R, M]; dynamic
  [B, T, R, M] (per token); DenseFormer [1, M]. With `static_coef`, coef = static_coef(router)[l] up to
  a reshape and h is not read.
  """

  def __call__(self, *, router_l: Any, h: jax.Array, l: jax.Array) -> jax.Array: ...


class LayerOut(NamedTuple):
  """What `post` returns: the next state (h's shape), the layer's buffer entry [*entry_shape] and the
  Block's extras (cache, raw_kv, value, attn_probs: lime_jax/model/block.py)."""

  h: jax.Array
  entry: jax.Array
  extras: dict


class PostFn(Protocol):
  """post(params_l=..., router_l=..., coef=..., prev=..., h=..., tables=..., l=..., cache_l=...,
  entry=...) -> LayerOut: the layer itself, adding its own (slot l) term to prev.

  params_l: layer l's Block parameters; router_l, h, l: as for `PreFn`; coef: pre's value; prev: the
  mix of slots < l (`MixFn`'s shape, float32); tables: the shared `LayerTables`; cache_l: the layer's
  decoding cache or None. entry: None, or (only when `LayerFns.entry` is set) the layer's entry as
  `EntryFn` computed it, read from its buffer slot: post then takes the entry's value from it and
  its gradient through its own computation (routers/kv.py `_stored`).
  """

  def __call__(
    self,
    *,
    params_l: Any,
    router_l: Any,
    coef: jax.Array,
    prev: jax.Array,
    h: jax.Array,
    tables: LayerTables,
    l: jax.Array,
    cache_l: dict | None,
    entry: jax.Array | None = None,
  ) -> LayerOut: ...


class StaticCoefFn(Protocol):
  """static_coef(router=...) -> coef_LRME [L, R, M, E]: every layer's coefficients, for routers whose
  coefficients do not depend on the input (router: the stacked arrays, leading axis L). Row r of layer
  l's prev weighs row e of slot m by coef_LRME[l, r, m, e]; it must be the linear map that `mix`
  computes (`MixFn`) and `pre`'s coef reshaped: the forward pass mixes with `mix`, the backward pass
  pulls with these weights, so a disagreement leaves the loss right and the gradients wrong
  (tests/integration/test_lime_exactness.py checks every registered router)."""

  def __call__(self, *, router: Any) -> jax.Array: ...


class EntryFn(Protocol):
  """entry(params_l=..., h=...) -> the layer's buffer entry [*entry_shape], computed on its own (the kv
  router: the raw k/v projection), equal to the entry `post` returns."""

  def __call__(self, *, params_l: Any, h: jax.Array) -> jax.Array: ...


class EntryShapeFn(Protocol):
  """entry_shape(batch=..., seq=...) -> one buffer slot's shape: kv (R, B, T, 2H); the others (B, T, D)."""

  def __call__(self, *, batch: int, seq: int) -> tuple[int, ...]: ...


@dataclasses.dataclass(frozen=True)
class LayerFns:
  """A router's three stages (module docstring; each a Protocol above) and the buffer it keeps.

  coef_axis: coef's source-slot axis; num_slots: M; block_size: S; dtype: the buffer's; policy: the
  remat policy of `post`. static_coef (`StaticCoefFn`): set when coef does not depend on the input;
  then the backward pass pulls. entry (`EntryFn`): set when post(..., entry=...) can take the entry as
  an input: with remat, the recomputed layer then reads its buffer slot instead of recomputing it.
  group_size / keep_far: the two-level schedule (module docstring; static square mixes only).
  """

  pre: PreFn
  mix: MixFn
  post: PostFn
  entry_shape: EntryShapeFn
  coef_axis: int
  num_slots: int
  block_size: int
  dtype: Any
  policy: str = "none"
  static_coef: StaticCoefFn | None = None
  group_size: int = 1
  keep_far: bool = False  # grouped, with remat: keep the far parts for the backward pass
  entry: EntryFn | None = None

  def __post_init__(self):
    G, S = self.group_size, self.block_size
    if G > 1 and (self.static_coef is None or G % S or self.num_slots % G):
      raise ValueError(
        f"LIMe group_size={G} needs static coefficients, a multiple of block_size={S} "
        f"and a divisor of the {self.num_slots} buffer slots."
      )

  @property
  def block_mix(self) -> lime_mix.BlockMix:
    return lime_mix.BlockMix(self.mix, self.block_size, self.coef_axis)

  def new_buffer(self, batch: int, seq: int) -> jax.Array:
    return jnp.zeros((self.num_slots, *self.entry_shape(batch=batch, seq=seq)), self.dtype)


class StackStages(Protocol):
  """What a topology that runs on this stack provides (`stack.Topology.stages(cfg)`): the 'lime'
  topology's router object (lime_jax/model/routers/base.py), DenseFormer's `DWA`."""

  def layer_fns(self, cfg: ModelConfig) -> LayerFns:
    """The stages and buffer for `cfg`."""
    ...

  def stacked(self, router_params: Any, cfg: ModelConfig, M: int) -> Any:
    """Per-layer arrays (leading [L]) that the stack scans over (`router_l`), from the topology's
    parameters (params['router']), sources padded to M slots."""
    ...

  def initial_state(self, h_BTD: jax.Array) -> jax.Array:
    """The stack's input state (`PreFn`'s h) from the embeddings [B, T, D]."""
    ...


# ------------------------------------------------------------------------------- one traced layer
class LayerStep(NamedTuple):
  """One forward layer's outputs (`layer_step`): the next residual stream, the buffer with slot l
  written, the layer's coef, prev and entry, and the pullback of its `post`."""

  h_next: jax.Array
  buf: jax.Array
  coef: jax.Array
  prev: jax.Array
  entry: jax.Array
  pullback: Any


class Known(NamedTuple):
  """Values the backward pass has at layer l without saving them: the layer's inputs, coef (from
  `pre`), prev (recomputed from the final buffer), entry (its slot) and the shared, layer-invariant
  inputs (`LayerTables`). None where the pullback does not read them (`PullbackLayout.known_used`)."""

  params: Any
  router: Any
  coef: jax.Array
  prev: jax.Array | None
  h: jax.Array
  entry: jax.Array | None
  l: jax.Array
  shared: Any


def _known_of(shared: Any, args: tuple, out: LayerStep) -> Known:
  """The known values of one `layer_step` call (args: h_BTD, buf, params_l, router_l, l)."""
  h_BTD, _, params_l, router_l, l = args
  return Known(params_l, router_l, out.coef, out.prev, h_BTD, out.entry, l, shared)


def layer_step(fns: LayerFns) -> Callable:
  """One forward layer with its pullback: step(tables, h_BTD, buf, params_l, router_l, l) ->
  `LayerStep`. The pullback holds exactly what the remat policy saves."""

  def step(tables, h_BTD, buf, params_l, router_l, l) -> LayerStep:
    coef = fns.pre(router_l=router_l, h=h_BTD, l=l)
    prev, buf = _forward_prev(fns, coef, buf, l)
    # With remat, an entry computed on its own is an input of the rematerialised layer, so its
    # recomputation in the backward pass reads the buffer slot (a known value) instead.
    entry_in = None if fns.entry is None or fns.policy == "none" else fns.entry(params_l=params_l, h=h_BTD)

    def post(params_l, router_l, coef, prev, h_BTD, entry_in):
      out = fns.post(
        params_l=params_l,
        router_l=router_l,
        coef=coef,
        prev=prev,
        h=h_BTD,
        tables=tables,
        l=l,
        cache_l=None,
        entry=entry_in,
      )
      return out.h, out.entry

    (h_next, entry), pullback = jax.vjp(
      lambda *args: remat(post, fns.policy)(*args, entry_in), params_l, router_l, coef, prev, h_BTD
    )
    entry = entry if entry_in is None else entry_in  # the same value; this variable is the known one
    buf = jax.lax.dynamic_update_index_in_dim(buf, entry.astype(buf.dtype), l, 0)
    return LayerStep(h_next, buf, coef, prev, entry, pullback)

  return step


def traced_layer(
  fns: LayerFns, layers: Any, router: Any, h_BTD: jax.Array, buf: jax.Array, tables: LayerTables
) -> TracedStep:
  """`layer_step` traced once on layer 0's inputs, its pullback's leaves sorted (layer_scan)."""
  example = (h_BTD, buf, *jax.tree.map(lambda x: x[0], (layers, router)), jnp.zeros((), jnp.int32))
  return trace_step(layer_step(fns), _known_of, tables, *example)


# ------------------------------------------------------------------------- grouped schedule glue
def _forward_prev(
  fns: LayerFns, coef: jax.Array, buf: jax.Array, l: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """prev_l in the forward pass. Grouped: slot l still holds the group's far part (`far_forward`
  wrote it at the group's first layer; layer l overwrites it with its entry), plus the near slots."""
  if fns.group_size == 1:
    return lime_mix.mix_forward(fns.block_mix, coef, buf, l)
  l0 = l - l % fns.group_size
  far = jax.lax.dynamic_index_in_dim(buf, l, 0, keepdims=False)
  return lime_mix.mix_forward(fns.block_mix, coef, buf, l, lo=l0 // fns.block_size, init=far)


def _write_far(fns: LayerFns, coef_MRME: jax.Array, buf: jax.Array, l0: jax.Array) -> jax.Array:
  """Writes the far parts of the G layers from l0 into their (not yet written) buffer slots."""
  R, E = coef_MRME.shape[1], coef_MRME.shape[3]
  if R != E:
    raise ValueError("LIMe grouping needs prev and a buffer slot of one shape (the kv router).")
  buf_MRX = buf.reshape(buf.shape[0], R, -1)
  out_MRX, _ = lime_mix.far_forward(fns.group_size, coef_MRME, buf_MRX, l0, l0)
  return out_MRX.reshape(buf.shape)


def _static_coef_MRME(fns: LayerFns, router: Any) -> jax.Array:
  """Every layer's static coefficients [M, R, M, E] (layer axis zero-padded to M slots)."""
  coef_LRME = fns.static_coef(router=router)
  return jnp.pad(coef_LRME, [(0, fns.num_slots - coef_LRME.shape[0]), (0, 0), (0, 0), (0, 0)])


# ------------------------------------------------------------------------------------ forward
class ForwardCarry(NamedTuple):
  """The forward scan's carry: the residual stream, the buffer, and (grouped, with remat and
  `keep_far`) the far parts kept for the backward pass [L - G, *slot], those of layers G.. (else None)."""

  h: jax.Array
  buf: jax.Array
  far: jax.Array | None


class Residuals(NamedTuple):
  """What the forward pass keeps for `_lime_stack_bwd`: the inputs, the shared inputs that the
  pullbacks read (None elsewhere), the final buffer, the kept far parts (or None), every layer's input
  h [L, B, T, D], the invariant and the stacked saved pullback leaves, and their layout."""

  layers: Any
  router: Any
  shared: Any
  buf: jax.Array
  far: jax.Array | None
  hs_LBTD: jax.Array
  invariant: list
  saved: list
  layout: PullbackLayout


def _scan_forward(
  fns: LayerFns, layers: Any, router: Any, h_BTD: jax.Array, tables: LayerTables, with_residuals: bool
) -> tuple[jax.Array, Residuals | None]:
  """Forward scan writing buffer slot l at layer l. With residuals, also returns what the backward
  pass needs (`Residuals`)."""
  L, G = jax.tree.leaves(layers)[0].shape[0], fns.group_size
  buf = fns.new_buffer(h_BTD.shape[0], h_BTD.shape[1])
  xs = (layers, router, jnp.arange(L))
  group_body = None
  if G > 1:
    coef_MRME = _static_coef_MRME(fns, router)

    def group_body(carry: ForwardCarry, l0) -> ForwardCarry:
      """Parks the far parts of the group's layers in their slots (and keeps them, with `far`)."""
      buf, far = _write_far(fns, coef_MRME, carry.buf, l0), carry.far
      if far is not None:  # l0 = 0: the start clamps to 0 and writes zeros there, which group 1 overwrites
        group_BX = jax.lax.dynamic_slice_in_dim(buf, l0, G, 0)
        far = jax.lax.dynamic_update_slice_in_dim(far, group_BX, jnp.maximum(l0 - G, 0), 0)
      return ForwardCarry(carry.h, buf, far)

  if not with_residuals:

    def plain_body(carry: ForwardCarry, xs_l):
      params_l, router_l, l = xs_l
      coef = fns.pre(router_l=router_l, h=carry.h, l=l)
      prev, buf = _forward_prev(fns, coef, carry.buf, l)
      out = fns.post(
        params_l=params_l,
        router_l=router_l,
        coef=coef,
        prev=prev,
        h=carry.h,
        tables=tables,
        l=l,
        cache_l=None,
      )
      buf = jax.lax.dynamic_update_index_in_dim(buf, out.entry.astype(buf.dtype), l, 0)
      return ForwardCarry(out.h, buf, None), None

    carry, _ = scan_layers(
      plain_body, ForwardCarry(h_BTD, buf, None), xs, group_size=G, group_body=group_body
    )
    return carry.h, None

  traced = traced_layer(fns, layers, router, h_BTD, buf, tables)
  layout = traced.layout
  used = layout.known_used()
  keeps_far = G > 1 and used.prev and fns.keep_far  # the first group's far parts are zero
  far = jnp.zeros((L - G, *buf.shape[1:]), buf.dtype) if keeps_far else None

  def body(carry: ForwardCarry, xs_l):
    out: LayerStep = traced.run(tables, carry.h, carry.buf, *xs_l)
    return ForwardCarry(out.h_next, out.buf, carry.far), (carry.h, layout.saved_leaves(out.pullback))

  carry, (hs_LBTD, saved) = scan_layers(
    body, ForwardCarry(h_BTD, buf, far), xs, group_size=G, group_body=group_body
  )
  shared = jax.tree.map(lambda x, u: x if u else None, tables, used.shared)
  return carry.h, Residuals(
    layers, router, shared, carry.buf, carry.far, hs_LBTD, traced.invariant, saved, layout
  )


# ------------------------------------------------------------------------- plain scan (reference)
class ScanCarry(NamedTuple):
  """`buffer_scan`'s carry (fields in the order of the carry it replaces)."""

  buf: jax.Array
  h: jax.Array


def buffer_scan(
  fns: LayerFns,
  layers: Any,
  router: Any,
  h: jax.Array,
  tables: LayerTables,
  cache: Any,
  collected: Callable,
) -> tuple[jax.Array, Any, Any]:
  """The stages of `fns` as a plain `lax.scan` with the buffer in the carry: for decoding (`cache`),
  per-layer collections and the O(L^2)-memory reference. Exact, and differentiable (reverse mode then
  saves the buffer at every layer). `collected(extras, h_next, coef)` gives a layer's collections.
  Returns (last residual state, stacked collections, stacked caches)."""

  def body(carry: ScanCarry, xs_l):
    params_l, router_l, l, cache_l = xs_l
    coef = taps.point("router", fns.pre(router_l=router_l, h=carry.h, l=l), l)
    prev = fns.mix(coef_block=coef, buf_block=carry.buf, start=0, l=l)
    out = fns.post(
      params_l=params_l,
      router_l=router_l,
      coef=coef,
      prev=prev,
      h=carry.h,
      tables=tables,
      l=l,
      cache_l=cache_l,
    )
    buf = jax.lax.dynamic_update_index_in_dim(carry.buf, out.entry.astype(carry.buf.dtype), l, 0)
    ys = {"collected": collected(out.extras, out.h, coef), "cache": out.extras["cache"]}
    return ScanCarry(buf, out.h), ys

  carry = ScanCarry(fns.new_buffer(h.shape[0], h.shape[1]), h)
  xs = (layers, router, jnp.arange(jax.tree.leaves(layers)[0].shape[0]), cache)
  carry, ys = jax.lax.scan(remat(body, fns.policy), carry, xs)
  return carry.h, ys["collected"], ys["cache"]


# -------------------------------------------------------------------------------- the custom VJP
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lime_stack(fns: LayerFns, layers: Any, router: Any, h_BTD: jax.Array, tables: LayerTables) -> jax.Array:
  """Runs all layers; returns the last residual stream. Differentiable with memory linear in depth.
  `tables` is the stack's shared, layer-invariant input."""
  return _scan_forward(fns, layers, router, h_BTD, tables, False)[0]


def _lime_stack_fwd(fns, layers, router, h_BTD, tables):
  return _scan_forward(fns, layers, router, h_BTD, tables, True)


def _lime_stack_bwd(fns, residuals: Residuals, dh_out_BTD):
  if fns.static_coef is None:
    return _push_bwd(fns, residuals, dh_out_BTD)
  return _pull_bwd(fns, residuals, dh_out_BTD)


class BackwardXs(NamedTuple):
  """What the backward scans read per layer."""

  params: Any
  router: Any
  l: jax.Array
  h: jax.Array
  saved: list


def _backward_xs(res: Residuals) -> BackwardXs:
  return BackwardXs(res.layers, res.router, jnp.arange(res.hs_LBTD.shape[0]), res.hs_LBTD, res.saved)


class PushCarry(NamedTuple):
  """`_push_bwd`'s carry: dh, the cotangent of the current layer's slot, the buffer's cotangent and
  the buffer (riding along: `push_backward` updates dbuf in place while reading buf)."""

  dh: jax.Array
  dentry: jax.Array
  dbuf: jax.Array
  buf: jax.Array


def _push_bwd(fns: LayerFns, res: Residuals, dh_out_BTD: jax.Array):
  """Backward scan pushing each layer's mix cotangent into the buffer cotangent (any router)."""
  used = res.layout.known_used()

  def body(carry: PushCarry, xs_l: BackwardXs):
    l, buf = xs_l.l, carry.buf
    coef, pre_pullback = jax.vjp(lambda r, h: fns.pre(router_l=r, h=h, l=l), xs_l.router, xs_l.h)
    prev = entry = None
    if used.prev:
      prev, buf = lime_mix.mix_forward(fns.block_mix, coef, buf, l)
    if used.entry:
      entry = jax.lax.dynamic_index_in_dim(buf, l, 0, keepdims=False)
    known = Known(xs_l.params, xs_l.router, coef, prev, xs_l.h, entry, l, res.shared)
    post_pullback = res.layout.rebuild(known, res.invariant, xs_l.saved)
    dparams, drouter, dcoef, dprev, dh_post_BTD = post_pullback((carry.dh, carry.dentry))
    dcoef_mix, dbuf, buf = lime_mix.push_backward(fns.block_mix, coef, buf, dprev, carry.dbuf, l)
    drouter_pre, dh_pre_BTD = pre_pullback(dcoef + dcoef_mix)
    drouter = jax.tree.map(jnp.add, drouter, drouter_pre)
    # The next layer's slot cotangent is complete now; reading it here (not at the start of the next
    # step, where XLA fuses the read past the in-place update) avoids copying dbuf every step.
    dentry = jax.lax.dynamic_index_in_dim(dbuf, jnp.maximum(l - 1, 0), 0, keepdims=False)
    return PushCarry(dh_post_BTD + dh_pre_BTD, dentry, dbuf, buf), (dparams, drouter)

  carry = PushCarry(dh_out_BTD, jnp.zeros_like(res.buf[0]), jnp.zeros_like(res.buf), res.buf)
  carry, (dlayers, drouter) = jax.lax.scan(body, carry, _backward_xs(res), reverse=True)
  return dlayers, drouter, carry.dh, None


class PullCarry(NamedTuple):
  """`_pull_bwd`'s carry: dh; the dprev stack [M, R, X] (merged: it is the buffer, slots above the
  current layer holding dprev, the others entries); the router's coefficient cotangent [M, R, M, E];
  the buffer (None when merged); grouped, the G-slot arrays parking the group's pulled slot cotangents
  and (recomputed with remat) its far parts, else None."""

  dh: jax.Array
  dprev_MRX: jax.Array
  dcoef_MRME: jax.Array
  buf: jax.Array | None
  pulled_GRX: jax.Array | None
  far_GRX: jax.Array | None


def _pull_bwd(fns: LayerFns, res: Residuals, dh_out_BTD: jax.Array):
  """Backward scan pulling the buffer cotangent from a stack of dprev (static coefficients).

  The stack is the buffer itself when a dprev slot is the size of a buffer slot (the kv router): layer
  l's entry is last read at layer l (the pulls of its cotangent and router gradients, and the
  recomputed prev of the layers above it, come before), so layer l then writes dprev_l over it. Slots
  above the current layer hold dprev, the others entries: the cotangent costs no memory of its own.
  (Otherwise, v1 static routers with several heads, the stack is a separate array.)

  Grouped (G > 1: the kv router, so merged; `_write_far` rejects the rest in the forward), each group
  starts (at its top layer) with `far_pull` and, when the layers must recompute prev (remat) and the
  forward pass did not keep their far parts (`LayerFns.keep_far`), with `far_forward`. Their results
  wait in two G-slot arrays until the group's layers run."""
  layout, kept_far = res.layout, res.far
  L, M, S, G = res.hs_LBTD.shape[0], fns.num_slots, fns.block_size, fns.group_size
  coef_LRME, coef_pullback = jax.vjp(lambda router: fns.static_coef(router=router), res.router)
  coef_MRME = jnp.pad(coef_LRME, [(0, M - L), (0, 0), (0, 0), (0, 0)])
  R, E = coef_LRME.shape[1], coef_LRME.shape[-1]
  X = res.buf[0].size // E
  merged = R == E
  buf_shape = res.buf.shape
  used = layout.known_used()
  recomputes_far = used.prev and kept_far is None

  def entries(dprev_MRX, buf):
    return dprev_MRX.reshape(buf_shape) if merged else buf

  def with_entries(dprev_MRX, buf, src):
    return (src.reshape(dprev_MRX.shape), buf) if merged else (dprev_MRX, src)

  def group_body(carry: PullCarry, l0) -> PullCarry:
    dprev_MRX, buf, far_GRX = carry.dprev_MRX, carry.buf, carry.far_GRX
    if recomputes_far:
      far_GRX, src = lime_mix.far_forward(G, coef_MRME, far_GRX, 0, l0, src=entries(dprev_MRX, buf))
      dprev_MRX, buf = with_entries(dprev_MRX, buf, src)
    dcoef_MRME, dprev_MRX, pulled_GRX = lime_mix.far_pull(
      G, coef_MRME, dprev_MRX, l0, carry.dcoef_MRME, carry.pulled_GRX
    )
    return PullCarry(carry.dh, dprev_MRX, dcoef_MRME, buf, pulled_GRX, far_GRX)

  def body(carry: PullCarry, xs_l: BackwardXs):
    l, dprev_MRX, buf = xs_l.l, carry.dprev_MRX, carry.buf
    coef = fns.pre(router_l=xs_l.router, h=xs_l.h, l=l)
    prev = dentry_init_EX = None
    lo, hi = 0, M // S
    if G > 1:
      l0 = l - l % G
      lo, hi = l0 // S, (l0 + G) // S
      dentry_init_EX = jax.lax.dynamic_index_in_dim(carry.pulled_GRX, l - l0, 0, keepdims=False)
    if used.prev:
      far = None
      if G > 1 and kept_far is not None:  # kept by the forward pass (layers G..); zero in the first group
        far = jax.lax.dynamic_index_in_dim(kept_far, jnp.maximum(l - G, 0), 0, keepdims=False)
        far = jnp.where(l >= G, far, jnp.zeros_like(far))
      elif G > 1:
        far = jax.lax.dynamic_index_in_dim(carry.far_GRX, l - l0, 0, keepdims=False)  # zero in group 0
      prev, src = lime_mix.mix_forward(fns.block_mix, coef, entries(dprev_MRX, buf), l, lo=lo, init=far)
      dprev_MRX, buf = with_entries(dprev_MRX, buf, src)
    entry = jax.lax.dynamic_index_in_dim(entries(dprev_MRX, buf), l, 0, keepdims=False)
    dentry_EX, entry_EX, dcoef_MRME, dprev_MRX = lime_mix.pull_backward(
      S, coef_MRME, dprev_MRX, entry.reshape(E, -1), l, carry.dcoef_MRME, hi=hi, init_EX=dentry_init_EX
    )
    entry = entry_EX.reshape(entry.shape)  # the loop's copy: no later read of slot l, which gets dprev_l
    known = Known(xs_l.params, xs_l.router, coef, prev, xs_l.h, entry, l, res.shared)
    post_pullback = layout.rebuild(known, res.invariant, xs_l.saved)
    dentry = dentry_EX.reshape(entry.shape).astype(entry.dtype)
    dparams, drouter, dcoef, dprev, dh_BTD = post_pullback((carry.dh, dentry))
    # coef is static_coef(router)[l]: its cotangent joins the pulled ones, mapped back at the end.
    dcoef_own = dcoef.reshape(coef_LRME.shape[1:]).astype(dcoef_MRME.dtype)
    own = jax.lax.dynamic_index_in_dim(dcoef_MRME, l, 0, keepdims=False) + dcoef_own
    dcoef_MRME = jax.lax.dynamic_update_index_in_dim(dcoef_MRME, own, l, 0)
    dprev_RX = dprev.reshape(dprev.shape[0], -1).astype(dprev_MRX.dtype)
    dprev_MRX = jax.lax.dynamic_update_index_in_dim(dprev_MRX, dprev_RX, l, 0)  # merged: over entry l
    return PullCarry(dh_BTD, dprev_MRX, dcoef_MRME, buf, carry.pulled_GRX, carry.far_GRX), (dparams, drouter)

  park = lambda needed: jnp.zeros((G, R, X), fns.dtype) if G > 1 and needed else None
  if merged:
    dprev_MRX, buf = res.buf.reshape(M, R, X), None
  else:
    dprev_MRX, buf = jnp.zeros((M, R, X), fns.dtype), res.buf  # the buffer's dtype
  carry = PullCarry(dh_out_BTD, dprev_MRX, jnp.zeros_like(coef_MRME), buf, park(True), park(recomputes_far))
  carry, (dlayers, drouter) = scan_layers(
    body, carry, _backward_xs(res), group_size=G, reverse=True, group_body=group_body
  )
  (drouter_coef,) = coef_pullback(carry.dcoef_MRME[:L])
  return dlayers, jax.tree.map(jnp.add, drouter, drouter_coef), carry.dh, None


lime_stack.defvjp(_lime_stack_fwd, _lime_stack_bwd)
