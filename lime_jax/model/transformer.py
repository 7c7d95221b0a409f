"""The decoder: embeddings -> scanned layer stack (per topology) -> final norm -> fp32 logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lime_jax.model import regularizers, taps
from lime_jax.model.block import Block
from lime_jax.model.dense import dense
from lime_jax.model.layers import make_norm, normal_init
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput
from lime_jax.model.tables import layer_tables
from lime_jax.model.topologies import get_topology
from lime_jax.runtime import sharding


def init_layer_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """Stacked parameters of all layers: every leaf gets a leading [L] axis (one init key per layer)."""
  dummy_h_BTD = jnp.zeros((1, 1, cfg.d_model), cfg.dtype)
  dummy_tables = layer_tables(cfg, jnp.zeros((1, 1), jnp.int32))
  layer = jnp.zeros((), jnp.int32)  # the shapes do not depend on it
  init_one = lambda key: Block(cfg).init(key, dummy_h_BTD, dummy_tables, layer=layer)["params"]
  with taps.editing(()):  # Flax also traces this under apply (to check the shapes): edits are not for it
    return jax.vmap(init_one)(jax.random.split(rng, cfg.num_layers))


class Transformer(nn.Module):
  """LLaMA-style decoder. Parameters: embed [V, D], layers (stacked [L, ...]), final_norm,
  unembed [D, V] when untied, router (topology parameters, e.g. LIMe) when the topology has them,
  seq_vcr_proj [K, D, P] with Seq-VCR and a projection (lime_jax/model/regularizers.py), pos_embed
  [max_positions, D] with learned positions (GPT-2). Gemma's `embed_scale` multiplies the embeddings
  (given ones too) by sqrt(D); `final_logit_softcap` caps the logits."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self,
    tokens_BT: jax.Array,
    positions_BT: jax.Array | None = None,
    cache: dict | None = None,
    collect: tuple[str, ...] = (),
    embeddings_BTD: jax.Array | None = None,
    regularize: bool = False,
    answer_mask_BT: jax.Array | None = None,
    logits_at_BK: jax.Array | None = None,
    layer_params: list | None = None,
  ) -> tuple[jax.Array, StackOutput]:
    """`embeddings_BTD`, when given, replaces the embedding lookup of `tokens_BT` (probes differentiate
    with respect to it); `tokens_BT` then only gives the shape.

    `regularize=True` adds the configured regularisers' terms (Seq-VCR) to `out.aux` (training only;
    never with a cache); `answer_mask_BT` is the batch's answer mask, for seq_vcr.positions='answer'.
    `logits_at_BK` (int [B, K], indices into T): the logits [B, K, V] of these positions only (a
    decoding prefill needs one per row; the full [B, T, V] logits are not formed).

    `layer_params` (topology 'plain'): params['layers'] split per layer (`stack.split_layers`), used in
    their place, with `cache` split likewise (`stack.split_cache`) or None; the stack then runs
    unrolled (`stack.run_plain_stack`: a decoding step without copies of the weights).

    `collect`: activations to return in `out.collected` (lime_jax/model/taps.py): per-layer ones
    (`taps.POINTS`) stacked [L, ...], 'embed' and 'final_norm' (`taps.FINAL_POINTS`) as they are
    (final_norm: of the `logits_at_BK` positions when given)."""
    cfg = self.cfg
    embed_VD = self.param("embed", normal_init(cfg.init_std), (cfg.vocab_size, cfg.d_model), cfg.pdtype)
    layers = self.param("layers", init_layer_params, cfg)
    if layer_params is not None:
      if cfg.topology != "plain":
        raise ValueError(f"layer_params (per-layer weights) need topology 'plain', not {cfg.topology!r}.")
      layers = layer_params
    topology = get_topology(cfg.topology)
    topo_params = None
    if topology.init_params is not None:
      topo_params = self.param("router", topology.init_params, cfg)
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)

    h_BTD = (jnp.take(embed_VD, tokens_BT, axis=0) if embeddings_BTD is None else embeddings_BTD).astype(
      cfg.dtype
    )
    if cfg.embed_scale:  # HF Gemma: sqrt(D) rounded to the activations' dtype
      h_BTD = h_BTD * jnp.asarray(cfg.d_model**0.5, cfg.dtype)
    if cfg.position == "learned":
      pos_PD = self.param(
        "pos_embed", normal_init(cfg.init_std), (cfg.max_positions, cfg.d_model), cfg.pdtype
      )
      h_BTD = h_BTD + jnp.take(pos_PD, positions_BT, axis=0).astype(cfg.dtype)
    h_BTD = taps.point(
      "embed", sharding.constrain(h_BTD, ("batch", "length", "embed"))
    )  # no-op outside a mesh
    hook = None
    if cfg.seq_vcr.enabled:
      proj_KDP = None
      if cfg.seq_vcr.proj_dim:
        proj_KDP = self.param("seq_vcr_proj", regularizers.init_projection, cfg)
      if regularize and cache is None:
        hook = regularizers.make_hook(cfg, proj_KDP, tokens_BT, answer_mask_BT)
    tables = layer_tables(cfg, positions_BT, decoding=cache is not None)  # once, for every layer
    final = {"embed": h_BTD}
    in_stack = tuple(name for name in collect if name not in taps.FINAL_POINTS)
    out = regularizers.run_stack(topology, hook, cfg, layers, topo_params, h_BTD, tables, cache, in_stack)
    h_BTD = out.h_BTD
    if logits_at_BK is not None:
      h_BTD = jnp.take_along_axis(h_BTD, logits_at_BK[:, :, None], axis=1)  # [B, K, D]
    h_BTD = taps.point("final_norm", make_norm(cfg, "final_norm")(h_BTD)).astype(jnp.float32)
    final["final_norm"] = h_BTD
    for name in collect:
      if name in taps.FINAL_POINTS:
        out.collected[name] = final[name]
    if cfg.tie_embeddings:
      logits_BTV = dense(h_BTD, embed_VD.astype(jnp.float32), w_transposed=True)
    else:
      unembed_DV = self.param("unembed", normal_init(cfg.init_std), (cfg.d_model, cfg.vocab_size), cfg.pdtype)
      logits_BTV = dense(h_BTD, unembed_DV.astype(jnp.float32))
    if cfg.final_logit_softcap:
      logits_BTV = cfg.final_logit_softcap * jnp.tanh(logits_BTV / cfg.final_logit_softcap)
    return sharding.constrain(logits_BTV, ("batch", "length", "vocab")), out


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
  """Model parameters (fp32 by default) for `cfg`, without running a forward pass on real data."""
  tokens_BT = jnp.zeros((1, 1), jnp.int32)
  return Transformer(cfg).init(rng, tokens_BT)["params"]


def unembed(params: dict, cfg: ModelConfig, h_BTD: jax.Array) -> jax.Array:
  """fp32 logits [B, T, V] of a residual stream h [B, T, D]: the final norm, the unembedding (tied or
  not) and any soft-cap, as the Transformer ends (the logit lens applies it to every layer)."""
  x_BTD = make_norm(cfg, "final_norm").apply({"params": params["final_norm"]}, h_BTD).astype(jnp.float32)
  if cfg.tie_embeddings:
    logits_BTV = dense(x_BTD, params["embed"].astype(jnp.float32), w_transposed=True)
  else:
    logits_BTV = dense(x_BTD, params["unembed"].astype(jnp.float32))
  if cfg.final_logit_softcap:
    logits_BTV = cfg.final_logit_softcap * jnp.tanh(logits_BTV / cfg.final_logit_softcap)
  return logits_BTV
