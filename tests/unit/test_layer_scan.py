"""The generic residual-aware layer scan (lime_jax/model/layer_scan.py) on a toy layer.

The toy layer h + gain * tanh(h w) * cos(phase) reads one shared input as is (gain: known by identity)
and builds a table from another inside itself (cos(phase): invariant); a custom VJP over a stack of
them built from `trace_step` must give `jax.grad` of the unrolled loop, and stack only tanh's part.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import layer_scan
from lime_jax.model.layer_scan import INVARIANT, KNOWN, SAVED, scan_layers, trace_step
from lime_jax.model.stack import remat

L, B, D = 4, 3, 5


class ToyStep(NamedTuple):
  h_next: jax.Array
  pullback: Any


class ToyKnown(NamedTuple):
  w: jax.Array
  h: jax.Array
  shared: dict


def toy_layer(w_DD: jax.Array, h_BD: jax.Array, shared: dict) -> jax.Array:
  phase_BD = jnp.cos(shared["phase_BD"])  # layer-invariant, built inside the layer
  return h_BD + shared["gain_BD"] * jnp.tanh(h_BD @ w_DD) * phase_BD


def toy_step(policy: str):
  def step(shared: dict, h_BD: jax.Array, w_DD: jax.Array) -> ToyStep:
    h_next, pullback = jax.vjp(remat(lambda w, h: toy_layer(w, h, shared), policy), w_DD, h_BD)
    return ToyStep(h_next, pullback)

  return step


def toy_known(shared: dict, args: tuple, out: ToyStep) -> ToyKnown:
  h_BD, w_DD = args
  return ToyKnown(w_DD, h_BD, shared)


def toy_stack(policy: str):
  """A stack of toy layers whose custom VJP stacks only the saved pullback leaves."""

  @jax.custom_vjp
  def run(ws_LDD, h_BD, shared):
    return jax.lax.scan(lambda h, w: (toy_layer(w, h, shared), None), h_BD, ws_LDD)[0]

  def fwd(ws_LDD, h_BD, shared):
    traced = trace_step(toy_step(policy), toy_known, shared, h_BD, ws_LDD[0])

    def body(h_BD, w_DD):
      out = traced.run(shared, h_BD, w_DD)
      return out.h_next, (h_BD, traced.layout.saved_leaves(out.pullback))

    h_out, (hs_LBD, saved) = scan_layers(body, h_BD, ws_LDD)
    return h_out, (ws_LDD, shared, hs_LBD, traced.invariant, saved, traced.layout)

  def bwd(res, dh_BD):
    ws_LDD, shared, hs_LBD, invariant, saved, layout = res

    def body(dh_BD, xs_l):
      w_DD, h_BD, saved_l = xs_l
      dw_DD, dh_BD = layout.rebuild(ToyKnown(w_DD, h_BD, shared), invariant, saved_l)(dh_BD)
      return dh_BD, dw_DD

    dh0_BD, dws_LDD = jax.lax.scan(body, dh_BD, (ws_LDD, hs_LBD, saved), reverse=True)
    return dws_LDD, dh0_BD, jax.tree.map(jnp.zeros_like, shared)

  run.defvjp(fwd, bwd)
  return run


def _inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  ws_LDD = jax.random.normal(keys[0], (L, D, D)) / np.sqrt(D)
  h_BD = jax.random.normal(keys[1], (B, D))
  shared = {"gain_BD": jax.random.normal(keys[2], (B, D)), "phase_BD": jax.random.normal(keys[3], (B, D))}
  return ws_LDD, h_BD, shared


def _unrolled_loss(ws_LDD, h_BD, shared):
  for l in range(L):
    h_BD = toy_layer(ws_LDD[l], h_BD, shared)
  return jnp.sum(jnp.sin(h_BD))


@pytest.mark.parametrize("policy", ("none", "full"))
def test_gradients_equal_the_unrolled_loop(policy):
  ws_LDD, h_BD, shared = _inputs()
  stack = toy_stack(policy)
  loss = lambda ws, h: jnp.sum(jnp.sin(stack(ws, h, shared)))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(ws_LDD, h_BD)
  ref = jax.grad(_unrolled_loss, argnums=(0, 1))(ws_LDD, h_BD, shared)
  np.testing.assert_allclose(loss(ws_LDD, h_BD), _unrolled_loss(ws_LDD, h_BD, shared), rtol=1e-6)
  for g, r in zip(grads, ref):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_known_inputs_and_invariant_tables_are_not_stacked():
  ws_LDD, h_BD, shared = _inputs()
  traced = trace_step(toy_step("none"), toy_known, shared, h_BD, ws_LDD[0])
  layout = traced.layout
  used = layout.known_used()
  assert used.w and used.h and used.shared["gain_BD"], used  # read as they are: known
  assert not used.shared["phase_BD"]  # only cos(phase) is read: invariant
  kinds = [s.kind for s in layout.sources]
  assert kinds.count(INVARIANT) >= 1 and kinds.count(KNOWN) >= 3, kinds
  # Only the tanh part depends on the layer and is none of the known values.
  assert 1 <= layout.num_saved == kinds.count(SAVED) <= 2, kinds
  invariant_value = jnp.cos(shared["phase_BD"])
  assert any(np.allclose(v, invariant_value) for v in traced.invariant)
  saved = layout.saved_leaves(traced.run(shared, h_BD, ws_LDD[0]).pullback)
  assert all(v.shape == (B, D) for v in saved)


def test_full_remat_stacks_nothing():
  """With jax.checkpoint saving nothing, the pullback holds the layer's inputs and the shared ones."""
  ws_LDD, h_BD, shared = _inputs()
  layout = trace_step(toy_step("full"), toy_known, shared, h_BD, ws_LDD[0]).layout
  assert layout.num_saved == 0, layout.sources
  used = layout.known_used()
  assert used.w and used.h and used.shared["gain_BD"] and used.shared["phase_BD"]


@pytest.mark.parametrize("reverse", (False, True))
def test_scan_layers_opens_each_group(reverse):
  """group_body(carry, l0) runs before a group's first layer (forward) or its last one (reverse)."""
  G, layers = 2, 6

  def layer_body(log, l):
    return log, l + 100 * log

  def group_body(log, l0):
    return l0

  _, ys = jax.jit(
    lambda: scan_layers(
      layer_body, jnp.int32(-1), jnp.arange(layers), group_size=G, reverse=reverse, group_body=group_body
    )
  )()
  l0_seen = (np.asarray(ys) - np.arange(layers)) // 100
  np.testing.assert_array_equal(l0_seen, np.arange(layers) // G * G)


# ------------------------------------------------------------ what the walk relies on (JAX upgrades)
def test_jax_extend_core_has_what_the_walk_uses():
  missing = [name for name in layer_scan.JAXPR_API if not hasattr(jex_core, name)]
  assert not missing, (
    f"jax {jax.__version__}: jax.extend.core has no {missing}; lime_jax/model/layer_scan.py walks jaxprs "
    "through these names: update trace_step / varying_vars."
  )
  layer_scan.check_jaxpr_api()


@jax.custom_jvp
def _custom(x, s):
  return x * jnp.sin(s), jnp.cos(s)


_custom.defjvp(lambda primals, tangents: (_custom(*primals), _custom(*primals)))


def _walked(s, x):
  """Outputs that depend on the shared input s only (invariant), or on the per-layer x (varying), inside
  and outside the call-like equations the walk enters (jit, checkpoint, custom_jvp) and a scan it does
  not enter (conservative: every output varying)."""
  only_s = jnp.sin(s)
  x2, cos_s = jax.jit(lambda x, s: (x * 2, jnp.cos(s)))(x, s)
  x3, s3 = jax.checkpoint(lambda x, s: (x + 1, s * 3))(x, s)
  xs, cs = _custom(x, s)
  scanned = jax.lax.scan(lambda c, _: (c + s, None), x, None, length=2)[0]
  both = x * only_s
  return only_s, x2, cos_s, x3, s3, xs, cs, scanned, both, x, s


WALKED_VARYING = [False, True, False, True, False, True, False, True, True, True, False]


def test_the_walk_sorts_a_known_function():
  """The dependency walk (`varying_vars`) on a small known function: which outputs depend on the
  per-layer input. A JAX whose jaxprs changed shape fails here, with the outputs it got wrong."""
  closed = jax.make_jaxpr(_walked)(1.0, 2.0)
  jaxpr = closed.jaxpr
  assert all(isinstance(v, jex_core.Var) for v in jaxpr.invars), jaxpr.invars
  varying = layer_scan.varying_vars(jaxpr, [False, True])
  got = [isinstance(v, jex_core.Var) and v in varying for v in jaxpr.outvars]
  wrong = [i for i, (g, w) in enumerate(zip(got, WALKED_VARYING)) if g != w]
  assert not wrong, (
    f"jax {jax.__version__}: layer_scan.varying_vars sorts outputs {wrong} of _walked wrongly "
    f"(got {got}); its jaxpr:\n{closed}"
  )
  # Inputs passed through are the inputs' very variables (how `known` values are found).
  assert jaxpr.outvars[-2] is jaxpr.invars[1] and jaxpr.outvars[-1] is jaxpr.invars[0]
  np.testing.assert_allclose(jex_core.jaxpr_as_fun(closed)(1.0, 2.0), _walked(1.0, 2.0), rtol=1e-6)


def test_a_changed_jaxpr_api_fails_loudly(monkeypatch):
  """If jax.extend.core loses a name the walk uses, trace_step says so (instead of mis-sorting)."""
  ws_LDD, h_BD, shared = _inputs()
  monkeypatch.delattr(jex_core, "jaxprs_in_params")
  with pytest.raises(layer_scan.JaxprWalkError, match=r"jax.extend.core has no jaxprs_in_params"):
    trace_step(toy_step("none"), toy_known, shared, h_BD, ws_LDD[0])


def test_a_jaxpr_variable_of_another_class_fails_loudly(monkeypatch):
  """If jaxpr variables stop being jax.extend.core.Var, no leaf would be known or varying (all
  invariant: layer 0's values for every layer); trace_step refuses instead."""
  ws_LDD, h_BD, shared = _inputs()

  class NotAVar:
    pass

  monkeypatch.setattr(jex_core, "Var", NotAVar)
  with pytest.raises(layer_scan.JaxprWalkError, match="neither jax.extend.core.Var nor Literal"):
    trace_step(toy_step("none"), toy_known, shared, h_BD, ws_LDD[0])
