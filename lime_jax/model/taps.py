"""Named activation points inside the model, and edits applied there (steering, patching, ablation).

Every layer passes its activations through `point(name, x, layer)` at the places listed in `POINTS`;
the stacks return the ones a caller collects (`Transformer(collect=...)`, stacked over layers), and
`editing(edits)` makes `point` change them while a forward pass is traced. Without edits `point`
returns its input untouched and adds nothing to the program (the training step's HLO is unchanged).

The edits are a dynamic scope entered *inside* the traced function (lime_jax/inspect/cache.py enters it
in the jitted forward, whose static arguments carry the edits' structure), so a jit cache never
replays a program traced under other edits.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Point:
  """One named activation: its shape, the axis that indexes tokens (None: not per token), whether an
  `Edit` can change it."""

  shape: str
  token_axis: int | None
  doc: str
  editable: bool = True


# Per-layer points, in the order a layer computes them. Shapes: B batch, T tokens, D d_model, N query
# heads, R kv heads, H head_dim, S attended slots (T without a cache), M LIMe buffer slots.
POINTS: dict[str, Point] = {
  "resid_pre": Point("[B, T, D]", 1, "the residual stream the layer's attention reads, before its norm"),
  "q": Point("[B, T, N, H]", 1, "attention queries, after q_norm and RoPE"),
  "raw_kv": Point(
    "[B, T, R, 2H]", 1, "the layer's own keys | values projection (pre-RoPE): what LIMe's kv router mixes"
  ),
  "mixed_kv": Point(
    "[B, T, R, 2H]", 1, "keys | values after the router's mix (pre-RoPE; without LIMe equal to raw_kv)"
  ),
  "k": Point("[B, T, R, H]", 1, "attention keys, after the mix and RoPE"),
  "value": Point("[B, T, R, H]", 1, "attention values, after the mix"),
  "attn_probs": Point(
    "[B, N, T, S]", 2, "attention probabilities (attention_impl='explicit'; collected, not editable)", False
  ),
  "attn_out": Point("[B, T, D]", 1, "the attention sub-layer's output (after wo and any post-norm)"),
  "resid_mid": Point("[B, T, D]", 1, "the residual stream the MLP reads, before its norm"),
  "mlp_out": Point("[B, T, D]", 1, "the MLP sub-layer's output (after any post-norm)"),
  "hidden": Point("[B, T, D]", 1, "the residual stream after the layer (the next layer's resid_pre)"),
  "router": Point(
    "router-specific", None, "LIMe's routing coefficients of the layer (the router's `pre` stage)"
  ),
}
# Points outside the layer stack (not stacked over layers).
FINAL_POINTS: dict[str, Point] = {
  "embed": Point("[B, T, D]", 1, "the embeddings the first layer reads (after any embedding scale)"),
  "final_norm": Point("[B, T, D]", 1, "the final norm's output, which the unembedding reads"),
}
OPS = ("add", "scale", "replace")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Edit:
  """Change activation `name` where it is computed: `add` value to it, `scale` it by value, or
  `replace` it with value (broadcast to the activation's shape, or with `per_layer` a leading [L] axis
  indexed by the layer). Only at `layers` (None: every layer) and token `positions` (None: every
  token; negative counts from the end). A pytree: `value` is its one array leaf."""

  name: str = dataclasses.field(metadata=dict(static=True))
  op: str = dataclasses.field(metadata=dict(static=True))
  value: Any = None
  layers: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
  positions: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
  per_layer: bool = dataclasses.field(default=False, metadata=dict(static=True))

  def __post_init__(self):
    if self.name not in POINTS and self.name not in FINAL_POINTS:
      names = sorted({**POINTS, **FINAL_POINTS})
      raise ValueError(f"Edit name={self.name!r} is unknown; use one of {names}.")
    if self.op not in OPS:
      raise ValueError(f"Edit op={self.op!r} is unknown; use one of {OPS}.")
    for field in ("layers", "positions"):
      given = getattr(self, field)
      if given is not None and not isinstance(given, tuple):
        object.__setattr__(self, field, tuple(int(i) for i in np.atleast_1d(given)))
    if self.name in FINAL_POINTS and (self.layers is not None or self.per_layer):
      raise ValueError(f"Edit of {self.name!r} (outside the layer stack) takes no layers / per_layer.")
    point = POINTS.get(self.name) or FINAL_POINTS[self.name]
    if not point.editable:
      raise ValueError(f"{self.name!r} can be collected but not edited ({point.doc}).")
    if self.positions is not None and point.token_axis is None:
      raise ValueError(f"Edit of {self.name!r}: it has no token axis, so positions must be None.")


_EDITS: contextvars.ContextVar[tuple[Edit, ...]] = contextvars.ContextVar("lime_jax_edits", default=())


@contextlib.contextmanager
def editing(edits: Sequence[Edit]) -> Iterator[None]:
  """Within this scope, forward passes traced apply `edits` at their points (module docstring)."""
  token = _EDITS.set(tuple(edits))
  try:
    yield
  finally:
    _EDITS.reset(token)


def active() -> bool:
  """Whether edits are in scope (the memory-linear stacks then run as plain scans)."""
  return bool(_EDITS.get())


def edited(name: str) -> bool:
  """Whether an edit in scope targets `name`."""
  return any(e.name == name for e in _EDITS.get())


def _mask(edit: Edit, x: jax.Array, layer: Any) -> jax.Array | bool:
  """Where `edit` applies in x: its layers (a traced or concrete layer index) and token positions."""
  mask: jax.Array | bool = True
  if edit.layers is not None:
    if layer is None:
      raise ValueError(f"Edit of {edit.name!r} at layers {edit.layers}: this stack gives no layer index.")
    mask = jnp.isin(jnp.asarray(layer), jnp.asarray(edit.layers, jnp.int32))
  point = POINTS.get(edit.name) or FINAL_POINTS[edit.name]
  if edit.positions is not None:
    axis, T = point.token_axis, x.shape[point.token_axis]
    bad = [p for p in edit.positions if not -T <= p < T]
    if bad:
      raise ValueError(f"Edit of {edit.name!r}: positions {bad} are outside the {T} tokens.")
    at_T = np.zeros(T, bool)
    at_T[np.asarray(edit.positions) % T] = True
    shape = [1] * x.ndim
    shape[axis] = T
    mask = jnp.logical_and(mask, jnp.asarray(at_T.reshape(shape)))
  return mask


def _apply(edit: Edit, x: jax.Array, layer: Any) -> jax.Array:
  value = jnp.asarray(edit.value)
  if edit.per_layer:
    if layer is None:
      raise ValueError(f"Edit of {edit.name!r} with per_layer=True: this stack gives no layer index.")
    value = jax.lax.dynamic_index_in_dim(value, jnp.asarray(layer, jnp.int32), 0, keepdims=False)
  if 0 < value.ndim < x.ndim:  # trailing axes, as numpy broadcasts (explicitly: rank promotion may raise)
    value = value.reshape((1,) * (x.ndim - value.ndim) + value.shape)
  if edit.op == "add":
    new = x + value
  elif edit.op == "scale":
    new = x * value
  else:
    new = jnp.broadcast_to(value, x.shape)
  if new.shape != x.shape:
    raise ValueError(
      f"Edit of {edit.name!r} ({edit.op}): value of shape {value.shape} does not broadcast to the "
      f"activation's {x.shape}."
    )
  return jnp.where(_mask(edit, x, layer), new.astype(x.dtype), x)


def point(name: str, x: jax.Array, layer: Any = None) -> jax.Array:
  """Activation `name` of layer `layer` (a traced or concrete index; None outside the stack), with
  the edits in scope that target it applied in order; `x` itself without any."""
  for edit in _EDITS.get():
    if edit.name == name:
      x = _apply(edit, x, layer)
  return x
