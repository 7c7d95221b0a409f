"""Small building blocks of the LLaMA backbone: RMSNorm, RoPE, SwiGLU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def normal_init(std: float) -> nn.initializers.Initializer:
  """Normal(0, std) initialiser (the backbone uses std 0.02 everywhere, SPEC §1)."""
  return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
  """Root-mean-square norm, computed in fp32 and cast back (as HF LlamaRMSNorm)."""

  eps: float = 1e-6
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    scale_D = self.param("scale", nn.initializers.ones, (x_BTD.shape[-1],), self.param_dtype)
    x32_BTD = x_BTD.astype(jnp.float32)
    inv_rms_BT1 = jax.lax.rsqrt(jnp.mean(jnp.square(x32_BTD), axis=-1, keepdims=True) + self.eps)
    scale_11D = scale_D.astype(jnp.float32).reshape((1,) * (x_BTD.ndim - 1) + (-1,))
    return (scale_11D * (x32_BTD * inv_rms_BT1)).astype(x_BTD.dtype)


def rope_angles(positions_BT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables [B, T, head_dim] in the 'rotate half' layout of LLaMA."""
  inv_freq_K = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_BTK = positions_BT.astype(jnp.float32)[..., None] * inv_freq_K[None, None, :]
  angles_BTC = jnp.concatenate([angles_BTK, angles_BTK], axis=-1)
  return jnp.cos(angles_BTC), jnp.sin(angles_BTC)


def apply_rope(x_BTNC: jax.Array, cos_BTC: jax.Array, sin_BTC: jax.Array) -> jax.Array:
  """Rotates the channel pairs (i, i + C/2) of every head by the position angle."""
  half = x_BTNC.shape[-1] // 2
  x32_BTNC = x_BTNC.astype(jnp.float32)
  rotated_BTNC = jnp.concatenate([-x32_BTNC[..., half:], x32_BTNC[..., :half]], axis=-1)
  out_BTNC = x32_BTNC * cos_BTC[:, :, None, :] + rotated_BTNC * sin_BTC[:, :, None, :]
  return out_BTNC.astype(x_BTNC.dtype)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)), no biases."""

  d_model: int
  ffn_dim: int
  init_std: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    init = normal_init(self.init_std)
    w_gate_DF = self.param("w_gate", init, (self.d_model, self.ffn_dim), self.param_dtype)
    w_up_DF = self.param("w_up", init, (self.d_model, self.ffn_dim), self.param_dtype)
    w_down_FD = self.param("w_down", init, (self.ffn_dim, self.d_model), self.param_dtype)
    x_BTD = x_BTD.astype(self.dtype)
    gate_BTF = jnp.einsum("btd,df->btf", x_BTD, w_gate_DF.astype(self.dtype))
    up_BTF = jnp.einsum("btd,df->btf", x_BTD, w_up_DF.astype(self.dtype))
    return jnp.einsum("btf,fd->btd", nn.silu(gate_BTF) * up_BTF, w_down_FD.astype(self.dtype))
