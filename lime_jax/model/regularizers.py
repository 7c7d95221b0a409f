"""Representation regularisers computed inside the layer stack: Seq-VCR (docs/methods.md §4).

Plug-in point, generic over regularisers and topologies: a *layer hook* is an object with
  `init_aux() -> dict`                 the aux entries (zeros) the stack's scan carry starts with, and
  `hook(l, h_BTD, aux) -> dict`        called by the stack body after block l with its output; returns
                                       the carry's `aux` with this layer's terms added.
A topology whose stack accepts `layer_hook=` (`Topology.layer_hook=True`, e.g. 'plain') calls it once per
layer inside its scan, so no per-layer activation is kept around. For any other topology
`run_stack` calls the hook once on the stack output as block L-1, so only the final block can be
regularised there (config.validate refuses other layers). `train_step.loss_fn` adds every aux entry to
the CE and logs each one, so the hook's terms are logged separately.

Seq-VCR settings (`config.model.seq_vcr`, frozen as `ModelConfig.seq_vcr`):
- `layers`: block indices whose OUTPUT (the residual stream after block l, before the final norm) is
  regularised; 0 is the first block, -1 the final one (the default, as in the paper). The paper's
  GPT-2 layer ablation counts Hugging Face hidden states (L0 = embeddings, L12 = final), i.e. its L_k is
  our block k-1; the embedding output itself is not offered. Several layers add their losses.
- `proj_dim`: a trainable linear map D -> proj_dim in front of the loss, one per regularised layer,
  `params['seq_vcr_proj']` [K, D, P], init N(0, 1/D), no bias (a covariance ignores a constant shift, so a
  bias would get no gradient). Nothing but the Seq-VCR loss reads it, so the CE gradient wrt it is
  exactly zero: only Seq-VCR trains it (weight decay still applies; optimizer group 'decay').
  0 regularises the raw representation.
- `positions` (unspecified in the paper; docs/methods.md §4 asks for positions aligned across the batch):
  'aligned' (default): per_position counts positions where every example of the batch has a real
             (non-PAD) input token; batch_length counts each example's real tokens. On multiplication
             every example has the same length, so this is every question, pause and answer position.
  'answer':  positions whose target is an answer token (or the final EOS): per_position those where
             every example predicts one, batch_length each example's own.
  'all':     every position, padding included.
- The loss is fp32 (see lime_jax/losses/seq_vcr.py); it runs only when the caller asks for it
  (`Transformer(..., regularize=True)`, as `loss_fn` does), never during decoding, eval or probes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lime_jax.data.tokenizer import PAD_ID
from lime_jax.losses.seq_vcr import aligned_positions, seq_vcr_loss
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput, Topology
from lime_jax.model.tables import LayerTables

AUX_KEYS = ("seq_vcr_variance", "seq_vcr_covariance")


def block_indices(cfg: ModelConfig) -> tuple[int, ...]:
  """The regularised blocks as indices in [0, L), in config order."""
  return tuple(int(l) % cfg.num_layers for l in cfg.seq_vcr.layers)


def init_projection(rng: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Projection weights [K, D, P] (K regularised layers), N(0, 1/D)."""
  shape = (len(cfg.seq_vcr.layers), cfg.d_model, cfg.seq_vcr.proj_dim)
  return (jax.random.normal(rng, shape, jnp.float32) * cfg.d_model**-0.5).astype(cfg.pdtype)


def position_mask(
  cfg: ModelConfig, tokens_BT: jax.Array, answer_mask_BT: jax.Array | None
) -> jax.Array | None:
  """The Seq-VCR position mask for `cfg.seq_vcr.positions` ([T] per_position; [B, T] batch_length)."""
  sv = cfg.seq_vcr
  if sv.positions == "all":
    return None
  if sv.positions == "aligned":
    mask_BT = (tokens_BT != PAD_ID).astype(jnp.float32)
  elif sv.positions == "answer":
    if answer_mask_BT is None:
      raise ValueError(
        "config.model.seq_vcr.positions='answer' needs the batch's answer_mask: call the "
        "model with answer_mask_BT=batch['answer_mask'] (loss_fn does)."
      )
    mask_BT = (answer_mask_BT != 0).astype(jnp.float32)
  else:
    raise ValueError(
      f"config.model.seq_vcr.positions={sv.positions!r} is unknown; use 'aligned', 'answer' or 'all'."
    )
  return aligned_positions(mask_BT) if sv.variant == "per_position" else mask_BT


@dataclasses.dataclass(frozen=True)
class SeqVcrHook:
  """Adds the Seq-VCR terms of the regularised blocks to the stack's aux (see the module doc)."""

  cfg: ModelConfig
  proj_KDP: jax.Array | None
  mask: jax.Array | None

  def init_aux(self) -> dict[str, jax.Array]:
    return {k: jnp.zeros((), jnp.float32) for k in AUX_KEYS}

  def terms(self, slot: jax.Array | int, h_BTD: jax.Array) -> dict[str, jax.Array]:
    """The two weighted Seq-VCR terms of one regularised block's output (slot = its projection)."""
    sv = self.cfg.seq_vcr
    z = h_BTD.astype(jnp.float32)
    if self.proj_KDP is not None:
      proj_DP = jax.lax.dynamic_index_in_dim(self.proj_KDP, slot, 0, keepdims=False)
      z = jnp.einsum("btd,dp->btp", z, proj_DP.astype(jnp.float32))
    out = seq_vcr_loss(z, self.mask, lambda1=sv.lambda1, lambda2=sv.lambda2, eta=sv.eta, variant=sv.variant)
    return {"seq_vcr_variance": out["variance"], "seq_vcr_covariance": out["covariance"]}

  def __call__(self, l: jax.Array | int, h_BTD: jax.Array, aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    blocks = block_indices(self.cfg)
    if isinstance(l, int):  # called outside a scan (the stack output of a topology without hooks)
      if l not in blocks:
        return aux
      terms = self.terms(blocks.index(l), h_BTD)
    else:
      slot_of = jnp.array([blocks.index(i) if i in blocks else -1 for i in range(self.cfg.num_layers)])
      slot = slot_of[l]
      terms = jax.lax.cond(
        slot >= 0, lambda h: self.terms(jnp.maximum(slot, 0), h), lambda h: self.init_aux(), h_BTD
      )
    return {**aux, **{k: aux[k] + v for k, v in terms.items()}}


def make_hook(
  cfg: ModelConfig, proj_KDP: jax.Array | None, tokens_BT: jax.Array, answer_mask_BT: jax.Array | None
) -> SeqVcrHook:
  return SeqVcrHook(cfg, proj_KDP, position_mask(cfg, tokens_BT, answer_mask_BT))


def run_stack(
  topology: Topology,
  hook: Any,
  cfg: ModelConfig,
  layers: Any,
  topo_params: Any,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None,
  collect: tuple[str, ...],
) -> StackOutput:
  """`topology.run`, with `hook` (or None) called per layer, or on the stack output as block L-1."""
  args = dict(cfg=cfg, layers=layers, topo_params=topo_params, h_BTD=h_BTD, tables=tables, cache=cache)
  if hook is None:
    return topology.run(**args, collect=collect)
  if topology.layer_hook:
    return topology.run(**args, collect=collect, layer_hook=hook)
  out = topology.run(**args, collect=collect)
  aux = hook(cfg.num_layers - 1, out.h_BTD, {**out.aux, **hook.init_aux()})
  return dataclasses.replace(out, aux=aux)
