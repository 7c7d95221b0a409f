"""Causal multi-head attention with grouped-query support and a switchable implementation.

`attention_impl`:
  - 'xla': `jax.nn.dot_product_attention(implementation='xla')` (default, runs everywhere);
  - 'cudnn': the cuDNN fused kernel (GPU only);
  - 'explicit': einsum + fp32 softmax, whose probabilities are returned for the probes.

Options of pretrained families: `scale` (logit scale, default 1/sqrt(H)), `softcap` (cap * tanh(logits /
cap), Gemma 2; computed with the explicit einsums under 'xla', refused under 'cudnn') and `window`
(sliding window: a key at position k is seen from q only when q - k < window; a static int here, a
per-layer window comes as part of the mask, `window_mask`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lime_jax.model.model_config import ATTENTION_IMPLS


def causal_mask(q_positions_BT: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
  """Boolean [B, 1, T, S] mask: query at position p sees keys at positions <= p."""
  return k_positions_BS[:, None, None, :] <= q_positions_BT[:, None, :, None]


def document_mask(positions_BT: jax.Array) -> jax.Array:
  """Boolean [B, 1, T, T]: query and key lie in the same document of a packed row, the documents being
  the runs of `positions_BT` that start at position 0 (per-document positions, data/corpus.py). A row
  whose positions are 0..T-1 is one document."""
  doc_BT = jnp.cumsum(positions_BT == 0, axis=1)
  return doc_BT[:, None, :, None] == doc_BT[:, None, None, :]


def window_mask(q_positions_BT: jax.Array, k_positions_BS: jax.Array, window) -> jax.Array:
  """Boolean [B, 1, T, S]: key within the sliding window of the query (q - k < window; int or traced)."""
  return (q_positions_BT[:, None, :, None] - k_positions_BS[:, None, None, :]) < window


def explicit_attention(
  q_BTNH: jax.Array,
  k_BSRH: jax.Array,
  v_BSRH: jax.Array,
  mask_B1TS: jax.Array,
  scale: float | None = None,
  softcap: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Softmax attention written out; returns (out_BTNH, probs_BNTS) with fp32 logits and softmax."""
  B, T, N, H = q_BTNH.shape
  R = k_BSRH.shape[2]
  q_BTRGH = q_BTNH.reshape(B, T, R, N // R, H)
  logits_BRGTS = jnp.einsum("btrgh,bsrh->brgts", q_BTRGH, k_BSRH, preferred_element_type=jnp.float32)
  if scale is None:
    logits_BRGTS = logits_BRGTS / jnp.sqrt(jnp.float32(H))
  else:
    logits_BRGTS = logits_BRGTS * jnp.float32(scale)
  if softcap:
    logits_BRGTS = softcap * jnp.tanh(logits_BRGTS / softcap)
  logits_BRGTS = jnp.where(mask_B1TS[:, :, None], logits_BRGTS, jnp.finfo(jnp.float32).min)
  probs_BRGTS = jax.nn.softmax(logits_BRGTS, axis=-1)
  out_BTRGH = jnp.einsum("brgts,bsrh->btrgh", probs_BRGTS.astype(v_BSRH.dtype), v_BSRH)
  return out_BTRGH.reshape(B, T, N, H), probs_BRGTS.reshape(B, N, T, -1)


def _grouped_logits(q_BTNH, k_BSRH, mask_B1TS, scale):
  """fp32 masked logits [B, R, G, T, S] of the queries grouped by their kv head (G = N / R)."""
  B, T, N, H = q_BTNH.shape
  R = k_BSRH.shape[2]
  q_BTRGH = q_BTNH.reshape(B, T, R, N // R, H)
  logits_BRGTS = jnp.einsum("btrgh,bsrh->brgts", q_BTRGH, k_BSRH, preferred_element_type=jnp.float32)
  logits_BRGTS = logits_BRGTS * jnp.float32(scale)
  return jnp.where(mask_B1TS[:, :, None], logits_BRGTS, jnp.finfo(jnp.float32).min), q_BTRGH


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def recompute_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale: float) -> jax.Array:
  """Softmax attention (fp32 logits and softmax, as `explicit_attention`) whose backward recomputes
  the probabilities from q, k and the saved log-sum-exp instead of keeping them: per layer it saves q,
  k, v, the output and [B, N, T] floats, where autodiff keeps the mask, the logits, their exponentials
  and the probabilities ([B, N, T, S] each). One more Q.K^T in the backward, as flash attention does."""
  return _recompute_fwd(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale)[0]


def _recompute_fwd(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale):
  B, T, N, H = q_BTNH.shape
  logits_BRGTS, _ = _grouped_logits(q_BTNH, k_BSRH, mask_B1TS, scale)
  lse_BRGT = jax.nn.logsumexp(logits_BRGTS, axis=-1)
  probs_BRGTS = jnp.exp(logits_BRGTS - lse_BRGT[..., None])
  out_BTRGH = jnp.einsum("brgts,bsrh->btrgh", probs_BRGTS.astype(v_BSRH.dtype), v_BSRH)
  out_BTNH = out_BTRGH.reshape(B, T, N, H)
  return out_BTNH, (q_BTNH, k_BSRH, v_BSRH, mask_B1TS, out_BTNH, lse_BRGT)


def _recompute_bwd(scale, saved, d_out_BTNH):
  """dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(dO * O)), zero where masked; dQ = dS K; dK = dS^T Q."""
  q_BTNH, k_BSRH, v_BSRH, mask_B1TS, out_BTNH, lse_BRGT = saved
  B, T, N, H = q_BTNH.shape
  R = k_BSRH.shape[2]
  logits_BRGTS, q_BTRGH = _grouped_logits(q_BTNH, k_BSRH, mask_B1TS, scale)
  probs_BRGTS = jnp.exp(logits_BRGTS - lse_BRGT[..., None])
  d_out_BTRGH = d_out_BTNH.reshape(B, T, R, N // R, H)
  d_v_BSRH = jnp.einsum(
    "brgts,btrgh->bsrh",
    probs_BRGTS.astype(d_out_BTRGH.dtype),
    d_out_BTRGH,
    preferred_element_type=jnp.float32,
  )
  d_probs_BRGTS = jnp.einsum("btrgh,bsrh->brgts", d_out_BTRGH, v_BSRH, preferred_element_type=jnp.float32)
  out_BTRGH = out_BTNH.reshape(B, T, R, N // R, H)
  row_BRGT = jnp.einsum("btrgh,btrgh->brgt", d_out_BTRGH.astype(jnp.float32), out_BTRGH.astype(jnp.float32))
  d_logits_BRGTS = probs_BRGTS * (d_probs_BRGTS - row_BRGT[..., None])
  d_logits_BRGTS = jnp.where(mask_B1TS[:, :, None], d_logits_BRGTS, 0.0) * jnp.float32(scale)
  d_logits_BRGTS = d_logits_BRGTS.astype(q_BTNH.dtype)
  d_q_BTRGH = jnp.einsum("brgts,bsrh->btrgh", d_logits_BRGTS, k_BSRH, preferred_element_type=jnp.float32)
  d_k_BSRH = jnp.einsum("brgts,btrgh->bsrh", d_logits_BRGTS, q_BTRGH, preferred_element_type=jnp.float32)
  return (
    d_q_BTRGH.reshape(B, T, N, H).astype(q_BTNH.dtype),
    d_k_BSRH.astype(k_BSRH.dtype),
    d_v_BSRH.astype(v_BSRH.dtype),
    None,
  )


recompute_attention.defvjp(_recompute_fwd, _recompute_bwd)


def one_query_attention(
  q_B1NH: jax.Array, k_BSRH: jax.Array, v_BSRH: jax.Array, mask_B11S: jax.Array, scale: float | None = None
) -> jax.Array:
  """Attention of one query per row (a decoding step), [B, 1, N, H], as products and sums: no matmul.

  XLA (CPU) runs the two attention matmuls of one query on layout copies (transposes) of the keys and
  values that cost more than the products: summed in place they are read once. fp32 logits, softmax and
  sums, the output cast to the values' dtype, as `jax.nn.dot_product_attention`."""
  B, _, N, H = q_B1NH.shape
  R = k_BSRH.shape[2]
  q_B1RGH = q_B1NH.reshape(B, 1, R, N // R, H).astype(jnp.float32)
  logits_BSRG = jnp.sum(k_BSRH[:, :, :, None, :].astype(jnp.float32) * q_B1RGH, axis=-1)
  logits_BSRG = logits_BSRG * jnp.float32(H**-0.5 if scale is None else scale)
  logits_BSRG = jnp.where(mask_B11S[:, 0, 0, :, None, None], logits_BSRG, jnp.finfo(jnp.float32).min)
  probs_BSRG = jax.nn.softmax(logits_BSRG, axis=1)
  out_BRGH = jnp.sum(probs_BSRG[..., None] * v_BSRH[:, :, :, None, :].astype(jnp.float32), axis=1)
  return out_BRGH.reshape(B, 1, N, H).astype(v_BSRH.dtype)


def attend(
  q_BTNH: jax.Array,
  k_BSRH: jax.Array,
  v_BSRH: jax.Array,
  impl: str,
  mask_B1TS: jax.Array | None = None,
  *,
  scale: float | None = None,
  softcap: float = 0.0,
  window: int = 0,
  recompute_probs: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
  """Causal attention; `mask_B1TS=None` means plain causal, the T queries being the last T of the S keys.

  `window` (static, > 0) applies a sliding window to that plain causal case; a given mask must already
  hold any window. `scale`: the logit scale (None: 1/sqrt(H)); `softcap`: 0 = off. `recompute_probs`:
  on CPU, impl 'xla' runs `recompute_attention` (the Block turns it off under remat, which recomputes
  the layer's forward anyway: there the probabilities live only within one layer's backward).
  """
  T, S = q_BTNH.shape[1], k_BSRH.shape[1]
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"config.model.attention_impl={impl!r} is unknown: use 'xla', 'cudnn' or 'explicit'.")
  if softcap and impl == "cudnn":
    raise ValueError(
      "config.model.attn_logit_softcap needs config.model.attention_impl='xla' or "
      "'explicit'; the cuDNN kernel has no logit soft-capping."
    )
  # XLA:CPU: attention whose backward recomputes the probabilities (saves 3 [B, N, T, S] per layer).
  recompute = recompute_probs and impl == "xla" and T > 1 and not softcap and jax.default_backend() == "cpu"
  if mask_B1TS is None and (impl == "explicit" or T != S or softcap or recompute):
    # (is_causal would align top-left.)
    mask_B1TS = jnp.tril(jnp.ones((T, S), bool), k=S - T)
    if window:
      mask_B1TS = mask_B1TS & ~jnp.tril(jnp.ones((T, S), bool), k=S - T - window)
    mask_B1TS = mask_B1TS[None, None]
  if impl == "explicit" or softcap:
    out_BTNH, probs_BNTS = explicit_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale, softcap)
    return out_BTNH, probs_BNTS if impl == "explicit" else None
  if impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError("config.model.attention_impl='cudnn' needs a GPU backend; use 'xla' here.")
  if impl == "xla" and T == 1 and mask_B1TS is not None:  # a decoding step
    return one_query_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale), None
  if recompute:
    H = q_BTNH.shape[-1]
    return recompute_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, H**-0.5 if scale is None else scale), None
  kwargs = {}
  if scale is not None:
    kwargs["scale"] = scale
  if window and mask_B1TS is None:
    kwargs["local_window_size"] = (window - 1, 0)
  out_BTNH = jax.nn.dot_product_attention(
    q_BTNH, k_BSRH, v_BSRH, mask=mask_B1TS, is_causal=mask_B1TS is None, implementation=impl, **kwargs
  )
  return out_BTNH, None
