"""Small building blocks of the backbone: RMSNorm / LayerNorm, RoPE (+ llama3 scaling), the MLPs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lime_jax.model import dense as dense_lib


def normal_init(std: float) -> nn.initializers.Initializer:
  """Normal(0, std) initialiser (the backbone uses std 0.02 everywhere, docs/methods.md §1)."""
  return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
  """Root-mean-square norm, computed in fp32 and cast back (as HF LlamaRMSNorm)."""

  eps: float = 1e-6
  param_dtype: jnp.dtype = jnp.float32
  offset: float = 0.0  # scales by (offset + w); Gemma stores w around 0 and uses offset 1 (init 0).

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale_D = self.param("scale", init, (x_BTD.shape[-1],), self.param_dtype)
    return rms_norm(x_BTD, scale_D, self.eps, self.offset)


def rms_norm(x_BTD: jax.Array, scale_D: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
  """(offset + scale) * x / rms(x) over the last axis, in fp32, cast back to x's dtype.

  Its backward keeps only x and 1 / rms (autodiff of the expression keeps x^2, x / rms and the scaled
  product too: 3 more copies of the stream per norm in a layer scan)."""
  return _rms_norm(float(eps), float(offset), x_BTD, scale_D)


def _rms_parts(eps: float, offset: float, x_BTD: jax.Array, scale_D: jax.Array):
  x32_BTD = x_BTD.astype(jnp.float32)
  inv_rms_BT1 = jax.lax.rsqrt(jnp.mean(jnp.square(x32_BTD), axis=-1, keepdims=True) + eps)
  scale_11D = scale_D.astype(jnp.float32).reshape((1,) * (x_BTD.ndim - 1) + (-1,))
  if offset:
    scale_11D = scale_11D + offset
  return x32_BTD, inv_rms_BT1, scale_11D


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rms_norm(eps: float, offset: float, x_BTD: jax.Array, scale_D: jax.Array) -> jax.Array:
  x32_BTD, inv_rms_BT1, scale_11D = _rms_parts(eps, offset, x_BTD, scale_D)
  return (scale_11D * (x32_BTD * inv_rms_BT1)).astype(x_BTD.dtype)


def _rms_norm_fwd(eps, offset, x_BTD, scale_D):
  x32_BTD, inv_rms_BT1, scale_11D = _rms_parts(eps, offset, x_BTD, scale_D)
  return (scale_11D * (x32_BTD * inv_rms_BT1)).astype(x_BTD.dtype), (x_BTD, inv_rms_BT1, scale_D)


def _rms_norm_bwd(eps, offset, saved, dy_BTD):
  """y = s x r with r = (mean(x^2) + eps)^-1/2: dx = r g - r^3 x mean(g x) with g = s dy; ds = sum dy x r."""
  x_BTD, inv_rms_BT1, scale_D = saved
  x32_BTD = x_BTD.astype(jnp.float32)
  dy32_BTD = dy_BTD.astype(jnp.float32)
  scale_11D = scale_D.astype(jnp.float32).reshape((1,) * (x_BTD.ndim - 1) + (-1,)) + offset
  g_BTD = scale_11D * dy32_BTD
  mean_gx_BT1 = jnp.mean(g_BTD * x32_BTD, axis=-1, keepdims=True)
  dx_BTD = inv_rms_BT1 * g_BTD - inv_rms_BT1**3 * x32_BTD * mean_gx_BT1
  d_scale_D = jnp.sum(dy32_BTD * x32_BTD * inv_rms_BT1, axis=tuple(range(x_BTD.ndim - 1)))
  return dx_BTD.astype(x_BTD.dtype), d_scale_D.astype(scale_D.dtype)


_rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias over the last axis, in fp32 and cast back (as torch.nn.LayerNorm)."""

  eps: float = 1e-5
  param_dtype: jnp.dtype = jnp.float32
  offset: float = 0.0

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale_D = self.param("scale", init, (x_BTD.shape[-1],), self.param_dtype)
    bias_D = self.param("bias", nn.initializers.zeros, (x_BTD.shape[-1],), self.param_dtype)
    x32_BTD = x_BTD.astype(jnp.float32)
    mean_BT1 = jnp.mean(x32_BTD, axis=-1, keepdims=True)
    var_BT1 = jnp.mean(jnp.square(x32_BTD - mean_BT1), axis=-1, keepdims=True)
    y_BTD = (x32_BTD - mean_BT1) * jax.lax.rsqrt(var_BT1 + self.eps)
    shape = (1,) * (x_BTD.ndim - 1) + (-1,)
    y_BTD = y_BTD * (scale_D.astype(jnp.float32) + self.offset).reshape(shape) + bias_D.astype(
      jnp.float32
    ).reshape(shape)
    return y_BTD.astype(x_BTD.dtype)


def make_norm(cfg: Any, name: str | None = None) -> nn.Module:
  """The norm `cfg.norm_type` selects ('rms' | 'layer'), with `cfg.rms_eps` and `cfg.norm_offset`."""
  if cfg.norm_type == "rms":
    return RMSNorm(cfg.rms_eps, cfg.pdtype, cfg.norm_offset, name=name)
  if cfg.norm_type == "layer":
    return LayerNorm(cfg.rms_eps, cfg.pdtype, cfg.norm_offset, name=name)
  raise ValueError(f"config.model.norm_type={cfg.norm_type!r} is unknown: use 'rms' or 'layer'.")


# A RoPE frequency rescaling: ('llama3', (factor, low_freq_factor, high_freq_factor, original_max_positions))
# or ('linear', (factor,)).
RopeScaling = tuple[str, tuple[float, ...]]


def rope_scaling_params(cfg: Any) -> RopeScaling | None:
  """`cfg.rope_scaling` with its parameters (see RopeScaling), or None without scaling."""
  if cfg.rope_scaling == "none":
    return None
  if cfg.rope_scaling == "linear":
    return ("linear", (cfg.rope_factor,))
  if cfg.rope_scaling != "llama3":
    raise ValueError(
      f"config.model.rope_scaling={cfg.rope_scaling!r} is unknown: use 'none', 'llama3' or 'linear'."
    )
  return (
    "llama3",
    (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_positions),
  )


def _llama3_inv_freq(inv_freq_K: jax.Array, scaling: tuple[float, ...]) -> jax.Array:
  """Llama 3.1's frequency rescaling: long wavelengths / factor, short kept, a smooth blend between."""
  factor, low, high, original = scaling
  wavelen_K = 2 * math.pi / inv_freq_K
  scaled_K = jnp.where(wavelen_K > original / low, inv_freq_K / factor, inv_freq_K)
  smooth_K = (original / wavelen_K - low) / (high - low)
  smoothed_K = (1 - smooth_K) * scaled_K / factor + smooth_K * scaled_K
  medium_K = (wavelen_K >= original / high) & (wavelen_K <= original / low)
  return jnp.where(medium_K, smoothed_K, scaled_K)


def rope_angles(
  positions_BT: jax.Array, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables [B, T, head_dim] in the 'rotate half' layout of LLaMA (`scaling`: llama3's or linear)."""
  inv_freq_K = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is not None:
    kind, args = scaling
    inv_freq_K = _llama3_inv_freq(inv_freq_K, args) if kind == "llama3" else inv_freq_K / args[0]
  angles_BTK = positions_BT.astype(jnp.float32)[..., None] * inv_freq_K[None, None, :]
  angles_BTC = jnp.concatenate([angles_BTK, angles_BTK], axis=-1)
  return jnp.cos(angles_BTC), jnp.sin(angles_BTC)


def apply_rope(x_BTNC: jax.Array, cos_BT1C: jax.Array, sin_BT1C: jax.Array) -> jax.Array:
  """Rotates the channel pairs (i, i + C/2) of every head by the position angle (tables [B, T, 1, C],
  lime_jax/model/tables.py, broadcast over the heads)."""
  half = x_BTNC.shape[-1] // 2
  x32_BTNC = x_BTNC.astype(jnp.float32)
  rotated_BTNC = jnp.concatenate([-x32_BTNC[..., half:], x32_BTNC[..., :half]], axis=-1)
  out_BTNC = x32_BTNC * cos_BT1C + rotated_BTNC * sin_BT1C
  return out_BTNC.astype(x_BTNC.dtype)


ACTIVATIONS = {
  "silu": nn.silu,
  "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
  "gelu": lambda x: nn.gelu(x, approximate=False),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated(act: Callable[[jax.Array], jax.Array], gate_BTF: jax.Array, up_BTF: jax.Array) -> jax.Array:
  """act(gate) * up, whose backward keeps only gate and up and recomputes act: autodiff of the product
  keeps act's intermediates too (silu: the sigmoid and the product, 2 more [B, T, F] per layer)."""
  return act(gate_BTF) * up_BTF


def _gated_fwd(act, gate_BTF, up_BTF):
  return act(gate_BTF) * up_BTF, (gate_BTF, up_BTF)


def _gated_bwd(act, saved, d_BTF):
  gate_BTF, up_BTF = saved
  act_BTF, act_vjp = jax.vjp(act, gate_BTF)
  (d_gate_BTF,) = act_vjp(d_BTF * up_BTF)
  return d_gate_BTF, d_BTF * act_BTF


gated.defvjp(_gated_fwd, _gated_bwd)


class Mlp(nn.Module):
  """Gated down(act(gate x) * up x) (SwiGLU / GeGLU) or plain down(act(up x)) (GPT-2), biases optional.

  Parameters: w_gate [D, F] (gated only), w_up [D, F], w_down [F, D]; with bias b_gate, b_up [F], b_down [D].
  """

  cfg: Any

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    cfg = self.cfg
    D, F, dtype, pdtype = cfg.d_model, cfg.ffn_dim, cfg.dtype, cfg.pdtype
    if cfg.mlp_activation not in ACTIVATIONS:
      raise ValueError(
        f"config.model.mlp_activation={cfg.mlp_activation!r} is unknown: use one of {sorted(ACTIVATIONS)}."
      )
    act = ACTIVATIONS[cfg.mlp_activation]
    init = normal_init(cfg.init_std)
    x_BTD = x_BTD.astype(dtype)

    def dense(name: str, x, d_in: int, d_out: int):
      w = self.param(f"w_{name}", init, (d_in, d_out), pdtype)
      y = dense_lib.dense(x, w.astype(dtype))
      if cfg.mlp_bias:
        y = y + self.param(f"b_{name}", nn.initializers.zeros, (d_out,), pdtype).astype(dtype)[None, None]
      return y

    if cfg.mlp_gated:
      hidden_BTF = gated(act, dense("gate", x_BTD, D, F), dense("up", x_BTD, D, F))
    else:
      hidden_BTF = act(dense("up", x_BTD, D, F))
    return dense("down", hidden_BTF, F, D)
