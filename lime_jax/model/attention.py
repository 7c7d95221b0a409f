"""Causal multi-head attention with grouped-query support and a switchable implementation.

`attention_impl`:
  - 'xla': `jax.nn.dot_product_attention(implementation='xla')` (default, runs everywhere);
  - 'cudnn': the cuDNN fused kernel (GPU only);
  - 'explicit': einsum + fp32 softmax, whose probabilities are returned for the probes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(q_positions_BT: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
  """Boolean [B, 1, T, S] mask: query at position p sees keys at positions <= p."""
  return (k_positions_BS[:, None, None, :] <= q_positions_BT[:, None, :, None])


def explicit_attention(q_BTNH: jax.Array, k_BSRH: jax.Array, v_BSRH: jax.Array,
                       mask_B1TS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax attention written out; returns (out_BTNH, probs_BNTS) with fp32 logits and softmax."""
  B, T, N, H = q_BTNH.shape
  R = k_BSRH.shape[2]
  q_BTRGH = q_BTNH.reshape(B, T, R, N // R, H)
  logits_BRGTS = jnp.einsum("btrgh,bsrh->brgts", q_BTRGH, k_BSRH,
                            preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(H))
  logits_BRGTS = jnp.where(mask_B1TS[:, :, None], logits_BRGTS, jnp.finfo(jnp.float32).min)
  probs_BRGTS = jax.nn.softmax(logits_BRGTS, axis=-1)
  out_BTRGH = jnp.einsum("brgts,bsrh->btrgh", probs_BRGTS.astype(v_BSRH.dtype), v_BSRH)
  return out_BTRGH.reshape(B, T, N, H), probs_BRGTS.reshape(B, N, T, -1)


def attend(q_BTNH: jax.Array, k_BSRH: jax.Array, v_BSRH: jax.Array, impl: str,
           mask_B1TS: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """Causal attention; `mask_B1TS=None` means plain causal, the T queries being the last T of the S keys."""
  T, S = q_BTNH.shape[1], k_BSRH.shape[1]
  if mask_B1TS is None and (impl == "explicit" or T != S):  # is_causal would align top-left.
    mask_B1TS = jnp.tril(jnp.ones((T, S), bool), k=S - T)[None, None]
  if impl == "explicit":
    return explicit_attention(q_BTNH, k_BSRH, v_BSRH, mask_B1TS)
  if impl not in ("xla", "cudnn"):
    raise ValueError(f"config.model.attention_impl={impl!r} is unknown: use 'xla', 'cudnn' or 'explicit'.")
  if impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError("config.model.attention_impl='cudnn' needs a GPU backend; use 'xla' here.")
  out_BTNH = jax.nn.dot_product_attention(
      q_BTNH, k_BSRH, v_BSRH, mask=mask_B1TS, is_causal=mask_B1TS is None, implementation=impl)
  return out_BTNH, None
