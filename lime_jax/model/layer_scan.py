"""A layer scan whose backward pass keeps only the residuals it cannot rebuild.

Shape letters (the same in lime_mix.py and lime_stack.py): L layers (the scan axis), G layers per group.

A custom VJP over a stack of layers runs each layer's step under `jax.vjp` in the forward scan (under
a remat policy, the pullback holds what that policy saves) and needs every layer's pullback again in
the backward scan. Stacking all its leaves over layers would also keep values the backward pass has
anyway. `trace_step` traces one step into a jaxpr and sorts each leaf of its pullback (`PullbackLayout`):

  known      the very variable of a value the backward pass has again at that layer: an input of the
             step, or a value it recomputes (the caller names these values, `known`), or an input in
             `shared` (the layer-invariant inputs: lime_jax/model/tables.py's positions, RoPE tables
             and mask, which the caller builds once);
  invariant  a value that depends on no per-layer input, only on `shared` and constants, without being
             one of them: what an op derives from them inside its own code (jax.nn.dot_product_attention
             builds its causal mask from constants and broadcasts a given mask), computed once, for all
             layers;
  saved      anything else: stacked over layers by the forward scan.

The sort is exact for the scan, which runs that very jaxpr (`TracedStep.run`). The step's interface is
generic: step(shared, *args) -> a pytree with a `pullback` field (e.g. a NamedTuple), and
known(shared, args, out) -> a pytree of the values the backward pass has again, picked from the step's
inputs and outputs (it only selects, so it can run on the jaxpr's variables).

`scan_layers` is the flat scan over layers with an optional group opener (the two-level schedule).

The sort walks the jaxpr through `jax.extend.core` (`JAXPR_API`), whose internals JAX may change
between versions. A change that breaks the walk raises `JaxprWalkError` naming what changed, rather
than mis-sorting a leaf (an invariant leaf that does depend on the layer would silently give every
layer layer 0's value); tests/unit/test_layer_scan.py pins what the walk relies on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp

KNOWN, INVARIANT, SAVED = "known", "invariant", "saved"
# What the walk uses of jax.extend.core: its variables (Var; Literal for constants), ClosedJaxpr.jaxpr,
# Jaxpr.invars / outvars / eqns, JaxprEqn.invars / outvars / params / primitive.name, the sub-jaxprs of
# an equation's params, and evaluating a ClosedJaxpr.
JAXPR_API = ("Var", "Literal", "ClosedJaxpr", "Jaxpr", "JaxprEqn", "jaxprs_in_params", "jaxpr_as_fun")


class JaxprWalkError(RuntimeError):
  """jax.extend.core no longer offers what `trace_step`'s walk relies on (`JAXPR_API`): a JAX upgrade."""


def _walk_error(what: str) -> JaxprWalkError:
  return JaxprWalkError(
    f"lime_jax/model/layer_scan.py sorts a layer's pullback by walking its jaxpr through jax.extend.core "
    f"({', '.join(JAXPR_API)}), and JAX {jax.__version__} changed it: {what}. Update trace_step and "
    "varying_vars (tests/unit/test_layer_scan.py pins the behaviour they rely on)."
  )


def check_jaxpr_api() -> None:
  """Raises `JaxprWalkError` if jax.extend.core lacks a name of `JAXPR_API`."""
  missing = [name for name in JAXPR_API if not hasattr(jex_core, name)]
  if missing:
    raise _walk_error(f"jax.extend.core has no {', '.join(missing)}")


class LeafSource(NamedTuple):
  """Where the backward pass gets one pullback leaf: kind KNOWN (index into the flat known values),
  INVARIANT (index into `TracedStep.invariant`) or SAVED (index into one layer's saved leaves)."""

  kind: str
  index: int


@dataclasses.dataclass(frozen=True, eq=False)
class PullbackLayout:
  """How to rebuild a layer's pullback in the backward pass (static: a pytree with no leaves)."""

  treedef: Any  # the pullback's structure
  known_treedef: Any  # the structure of the known values
  sources: tuple[LeafSource, ...]  # one per pullback leaf

  @property
  def num_saved(self) -> int:
    return sum(s.kind == SAVED for s in self.sources)

  def known_used(self) -> Any:
    """The known values' structure with True where the pullback reads that value."""
    used = {s.index for s in self.sources if s.kind == KNOWN}
    return jax.tree.unflatten(self.known_treedef, [i in used for i in range(self.known_treedef.num_leaves)])

  def saved_leaves(self, pullback: Any) -> list[jax.Array]:
    """The leaves of a layer's pullback that the forward scan stacks."""
    leaves = self.treedef.flatten_up_to(pullback)
    return [leaf for leaf, s in zip(leaves, self.sources) if s.kind == SAVED]

  def rebuild(self, known: Any, invariant: list[jax.Array], saved: list[jax.Array]) -> Any:
    """The pullback from the known values (the structure of `known_treedef`; None where unread),
    the invariant leaves and one layer's saved leaves."""
    by_kind = {KNOWN: self.known_treedef.flatten_up_to(known), INVARIANT: invariant, SAVED: saved}
    return jax.tree.unflatten(self.treedef, [by_kind[s.kind][s.index] for s in self.sources])


jax.tree_util.register_static(PullbackLayout)


class TracedStep(NamedTuple):
  """A traced layer step: `run(shared, *args)` evaluates its jaxpr (the step's output pytree),
  `layout` sorts its pullback's leaves, `invariant` holds the values of the invariant ones."""

  run: Callable
  layout: PullbackLayout
  invariant: list[jax.Array]


def trace_step(step: Callable, known: Callable, shared: Any, *args: Any) -> TracedStep:
  """Traces step(shared, *args) once (`args`: one layer's inputs, e.g. layer 0's) and sorts its
  pullback's leaves (module docstring). Every input in `args` counts as per-layer."""
  check_jaxpr_api()
  closed, out_shape = jax.make_jaxpr(step, return_shape=True)(shared, *args)
  try:
    jaxpr = closed.jaxpr
    invars, outvars = list(jaxpr.invars), list(jaxpr.outvars)
  except AttributeError as err:
    raise _walk_error(f"a ClosedJaxpr / Jaxpr lacks {err.name!r}") from err
  _check_vars(invars, "an input")
  _check_vars(outvars, "an output")
  in_treedef, out_treedef = jax.tree.structure((shared, args)), jax.tree.structure(out_shape)
  shared_vars, args_vars = jax.tree.unflatten(in_treedef, invars)
  out_vars = jax.tree.unflatten(out_treedef, outvars)
  known_vars, known_treedef = jax.tree.flatten(known(shared_vars, args_vars, out_vars))
  leaf_vars, treedef = jax.tree.flatten(out_vars.pullback)

  per_layer = [False] * len(jax.tree.leaves(shared_vars)) + [True] * len(jax.tree.leaves(args_vars))
  try:
    varying = varying_vars(jaxpr, per_layer)
  except (AttributeError, TypeError) as err:
    raise _walk_error(f"walking the equations failed with {err!r}") from err
  sources, invariant_at, num_saved = [], [], 0
  for i, v in enumerate(leaf_vars):
    is_var = isinstance(v, jex_core.Var)
    k = next((k for k, u in enumerate(known_vars) if is_var and v is u), None)
    if k is not None:
      sources.append(LeafSource(KNOWN, k))
    elif not (is_var and v in varying):
      sources.append(LeafSource(INVARIANT, len(invariant_at)))
      invariant_at.append(i)
    else:
      sources.append(LeafSource(SAVED, num_saved))
      num_saved += 1

  def run(shared: Any, *args: Any) -> Any:
    return jax.tree.unflatten(out_treedef, jex_core.jaxpr_as_fun(closed)(*jax.tree.leaves((shared, args))))

  invariant = []
  if invariant_at:  # they depend on no per-layer input: any layer's values will do
    leaves = jax.tree.leaves(run(shared, *args).pullback)
    invariant = [leaves[i] for i in invariant_at]
  return TracedStep(run, PullbackLayout(treedef, known_treedef, tuple(sources)), invariant)


def _check_vars(atoms: list, what: str) -> None:
  """Every jaxpr input / output must be a `Var` or a `Literal`: else the identity and dependency tests
  of the walk would silently see no variable (and call every leaf invariant)."""
  for atom in atoms:
    if not isinstance(atom, (jex_core.Var, jex_core.Literal)):
      raise _walk_error(
        f"{what} of a jaxpr is a {type(atom).__name__}, neither jax.extend.core.Var nor Literal"
      )


def varying_vars(jaxpr: jex_core.Jaxpr, varying_in: list[bool]) -> set:
  """The variables of `jaxpr` that depend on an input marked in `varying_in` (constants do not).

  The one walk of jaxpr internals. The layer-invariant tables come in as shared inputs, so the pullback
  reads them by identity (known); what is left for this walk is what library code derives from them or
  from constants inside the layer (attention's own causal mask, a broadcast mask, a scalar fill value),
  which would otherwise be stacked over layers (a [B, N, T, T] mask per layer without remat). An
  equation with a varying input makes all its outputs varying (conservative, so never wrong), except
  a call-like one whose single sub-jaxpr maps its inputs and outputs one to one (jit, checkpoint,
  custom_jvp / custom_vjp), which is entered; loop bodies (scan) are not entered, since a carry would
  need a fixpoint."""
  varying = {v for v, m in zip(jaxpr.invars, varying_in) if m}
  is_varying = lambda v: isinstance(v, jex_core.Var) and v in varying
  for eqn in jaxpr.eqns:
    eqn_in = [is_varying(v) for v in eqn.invars]
    if not any(eqn_in):
      continue
    subs = list(jex_core.jaxprs_in_params(eqn.params))
    sub = subs[0] if len(subs) == 1 and eqn.primitive.name != "scan" else None
    if sub is not None and len(sub.invars) == len(eqn.invars) and len(sub.outvars) == len(eqn.outvars):
      sub_varying = varying_vars(sub, eqn_in)
      eqn_out = [isinstance(v, jex_core.Var) and v in sub_varying for v in sub.outvars]
    else:
      eqn_out = [True] * len(eqn.outvars)
    varying.update(v for v, m in zip(eqn.outvars, eqn_out) if m)
  return varying


def scan_layers(
  layer_body: Callable,
  carry: Any,
  xs: Any,
  *,
  group_size: int = 1,
  reverse: bool = False,
  group_body: Callable | None = None,
) -> tuple[Any, Any]:
  """`lax.scan` of layer_body(carry, xs_l) -> (carry, ys_l) over layers (`xs`' leading axis L).

  Grouped (G = group_size > 1 and a `group_body`), the layer that opens a group (forward: its first;
  reverse: its last) first runs group_body(carry, l0) -> carry under a `lax.cond`, l0 being the group's
  first layer. One flat scan, not a scan over groups of an inner scan: nested scans copy each group's
  stacked outputs (saved residuals, per-layer gradients) into the outer stack, G layers' worth of extra
  memory."""
  G = group_size
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
