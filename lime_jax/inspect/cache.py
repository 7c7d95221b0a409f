"""`run_with_cache`: one forward pass that returns the logits and the activations asked for by name,
with edits applied where they are computed (lime_jax/model/taps.py)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.inspect.loading import Model
from lime_jax.model import taps
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.transformer import Transformer


def check_names(cfg: ModelConfig, names: Sequence[str]) -> tuple[str, ...]:
  """`names` as a tuple, each a known activation of this model (a clear error otherwise)."""
  known = {**taps.POINTS, **taps.FINAL_POINTS}
  for name in names:
    if name not in known:
      raise ValueError(
        f"activation {name!r} is unknown; use any of {sorted(known)} (lime_jax.inspect.POINTS)."
      )
    if name == "router" and cfg.topology != "lime":
      raise ValueError(f"'router' (LIMe's routing coefficients) needs topology 'lime', not {cfg.topology!r}.")
    if name == "attn_probs" and cfg.attention_impl != "explicit":
      raise ValueError(
        "'attn_probs' needs the probabilities formed: load the model with attention_impl='explicit' "
        "(dataclasses.replace(model.cfg, attention_impl='explicit'))."
      )
  return tuple(dict.fromkeys(names))


@functools.partial(jax.jit, static_argnames=("cfg", "names", "with_logits"))
def _forward(
  params: Any,
  tokens_BT: jax.Array,
  positions_BT: jax.Array,
  edits: tuple[taps.Edit, ...],
  *,
  cfg: ModelConfig,
  names: tuple[str, ...],
  with_logits: bool,
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """The jitted forward: compiled once per (cfg, names, edits' structure, shapes). The edits' scope is
  entered while tracing, so the program a cache entry holds is the one traced under these edits."""
  with taps.editing(edits):
    logits_BTV, out = Transformer(cfg).apply({"params": params}, tokens_BT, positions_BT, collect=names)
  return (logits_BTV if with_logits else None), out.collected


def run_with_cache(
  model: Model,
  tokens_BT: Any,
  names: Sequence[str] = (),
  edits: Sequence[taps.Edit] = (),
  positions_BT: Any = None,
  logits: bool = True,
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """(logits [B, T, V] fp32, {name: activation}) of one forward pass of `model` over `tokens_BT` (int
  [B, T] or [T]; a [T] input gives B = 1).

  `names`: activations to keep (`lime_jax.inspect.POINTS`: per layer, stacked [L, B, T, ...];
  `FINAL_POINTS`: 'embed' and 'final_norm', [B, T, D]); nothing else is kept. `edits`: `Edit`s applied
  where their activation is computed (steering, patching, ablation); the logits and activations are
  those of the edited model. `logits=False` skips the [B, T, V] logits (large vocabularies). Without
  edits the logits are the plain forward's; every topology runs its plain scan here (forward use).
  """
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if tokens_BT.ndim == 1:
    tokens_BT = tokens_BT[None]
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens_BT must be [B, T] (or [T]) token ids, got shape {tokens_BT.shape}.")
  if positions_BT is None:
    positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
  names = check_names(model.cfg, names)
  edits = tuple(edits)
  for edit in edits:
    if not isinstance(edit, taps.Edit):
      raise TypeError(f"edits must be lime_jax.inspect.Edit objects, got {type(edit).__name__}.")
    bad = [l for l in edit.layers or () if not 0 <= l < model.cfg.num_layers]
    if bad:
      raise ValueError(f"Edit of {edit.name!r}: layers {bad} are outside the model's {model.cfg.num_layers}.")
    if edit.per_layer and np.shape(edit.value)[:1] != (model.cfg.num_layers,):
      raise ValueError(
        f"Edit of {edit.name!r} with per_layer=True: value needs a leading axis of {model.cfg.num_layers} "
        f"layers, got shape {np.shape(edit.value)}."
      )
    check_names(model.cfg, [edit.name])
  return _forward(
    model.params,
    tokens_BT,
    jnp.asarray(positions_BT, jnp.int32),
    edits,
    cfg=model.cfg,
    names=names,
    with_logits=logits,
  )
