"""Causal multi-head attention with grouped-query support and a switchable implementation.

`attention_impl`:
  - 'xla': `jax.nn.dot_product_attention(implementation='xla')` (default, runs everywhere); on the CPU
    backend with remat 'none', `recompute_attention` (the same math; its backward recomputes the
    probabilities instead of keeping them, on matrices batched over batch and kv head);
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


def _head_major(q_BTNH, k_BSRH, v_BSRH, mask_B1TS):
  """Operands as matrices batched over (B, R): q as [B, R, Q, H] with Q = G*T (the G = N / R queries of
  each kv head, then the positions), k and v as [B, R, S, H], the mask as [B', 1, Q, S]."""
  B, T, N, H = q_BTNH.shape
  R = k_BSRH.shape[2]
  G = N // R
  q_BRQH = q_BTNH.reshape(B, T, R, G, H).transpose(0, 2, 3, 1, 4).reshape(B, R, G * T, H)
  mask_B1QS = jnp.broadcast_to(mask_B1TS[:, :, None], (mask_B1TS.shape[0], 1, G, T, mask_B1TS.shape[-1]))
  mask_B1QS = mask_B1QS.reshape(mask_B1TS.shape[0], 1, G * T, -1)
  return q_BRQH, k_BSRH.transpose(0, 2, 1, 3), v_BSRH.transpose(0, 2, 1, 3), mask_B1QS


def _token_major(x_BRQH, T: int) -> jax.Array:
  """[B, R, G*T, H] -> [B, T, R*G, H], the inverse of `_head_major`'s layout of q."""
  B, R, Q, H = x_BRQH.shape
  return x_BRQH.reshape(B, R, Q // T, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, R * (Q // T), H)


def _masked_logits(q_BRQH, k_BRSH, mask_B1QS, scale):
  """fp32 masked logits [B, R, Q, S]."""
  logits_BRQS = jnp.einsum("brqh,brsh->brqs", q_BRQH, k_BRSH, preferred_element_type=jnp.float32)
  return jnp.where(mask_B1QS, logits_BRQS * jnp.float32(scale), jnp.finfo(jnp.float32).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def recompute_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale: float) -> jax.Array:
  """Softmax attention (fp32 logits and softmax, as `explicit_attention`) whose backward recomputes
  the probabilities from q, k and the saved log-sum-exp instead of keeping them: per layer it saves q,
  k, v, the output and [B, N, T] floats, where autodiff keeps the mask, the logits, their exponentials
  and the probabilities ([B, N, T, S] each). One more Q.K^T in the backward, as flash attention does.

  Computed on matrices batched over (batch, kv head) (`_head_major`): on XLA:CPU the products on
  [B, T, N, H] operands ran with layout copies fused into the softmax's elementwise ops, 2.2x the time
  of this form (forward + backward of one layer, docs/benchmarks.md)."""
  return _recompute_fwd(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale)[0]


def _recompute_fwd(q_BTNH, k_BSRH, v_BSRH, mask_B1TS, scale):
  T = q_BTNH.shape[1]
  q_BRQH, k_BRSH, v_BRSH, mask_B1QS = _head_major(q_BTNH, k_BSRH, v_BSRH, mask_B1TS)
  logits_BRQS = _masked_logits(q_BRQH, k_BRSH, mask_B1QS, scale)
  lse_BRQ = jax.nn.logsumexp(logits_BRQS, axis=-1)
  probs_BRQS = jnp.exp(logits_BRQS - lse_BRQ[..., None])
  out_BRQH = jnp.einsum("brqs,brsh->brqh", probs_BRQS.astype(v_BRSH.dtype), v_BRSH)
  return _token_major(out_BRQH, T), (q_BRQH, k_BRSH, v_BRSH, mask_B1QS, out_BRQH, lse_BRQ)


def _recompute_bwd(scale, saved, d_out_BTNH):
  """dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(dO * O)), zero where masked; dQ = dS K; dK = dS^T Q."""
  q_BRQH, k_BRSH, v_BRSH, mask_B1QS, out_BRQH, lse_BRQ = saved
  B, T, N, H = d_out_BTNH.shape
  R = k_BRSH.shape[1]
  probs_BRQS = jnp.exp(_masked_logits(q_BRQH, k_BRSH, mask_B1QS, scale) - lse_BRQ[..., None])
  d_out_BRQH = d_out_BTNH.reshape(B, T, R, N // R, H).transpose(0, 2, 3, 1, 4).reshape(B, R, -1, H)
  f32 = jnp.float32
  d_v_BRSH = jnp.einsum(
    "brqs,brqh->brsh", probs_BRQS.astype(d_out_BRQH.dtype), d_out_BRQH, preferred_element_type=f32
  )
  d_probs_BRQS = jnp.einsum("brqh,brsh->brqs", d_out_BRQH, v_BRSH, preferred_element_type=f32)
  row_BRQ = jnp.sum(d_out_BRQH.astype(f32) * out_BRQH.astype(f32), axis=-1)
  d_logits_BRQS = probs_BRQS * (d_probs_BRQS - row_BRQ[..., None])
  d_logits_BRQS = (jnp.where(mask_B1QS, d_logits_BRQS, 0.0) * f32(scale)).astype(q_BRQH.dtype)
  d_q_BRQH = jnp.einsum("brqs,brsh->brqh", d_logits_BRQS, k_BRSH, preferred_element_type=f32)
  d_k_BRSH = jnp.einsum("brqs,brqh->brsh", d_logits_BRQS, q_BRQH, preferred_element_type=f32)
  return (
    _token_major(d_q_BRQH, T).astype(q_BRQH.dtype),
    d_k_BRSH.transpose(0, 2, 1, 3).astype(k_BRSH.dtype),
    d_v_BRSH.transpose(0, 2, 1, 3).astype(v_BRSH.dtype),
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
