"""Value residual learning (ResFormer, Zhou et al. 2024; docs/methods.md §3).

Layer n attends with U_n = A_n(lambda V_1 + (1 - lambda) V_n): its values are mixed with the first
layer's values V_1 (raw, per kv head, at the same token); keys, queries and RoPE are unchanged. Layer 0
(the first) uses its own values. lambda is fixed (`value_residual.init_lambda`, 0.5) or, with
`value_residual.learnable`, one learnable scalar per layer initialised to `init_lambda`
(`params['router']['lambda_L']`; layer 0's entry has no effect: L - 1 parameters reach the output).

V_1 rides in the scan carry ([B, T, R, H]); the Block's `kv_mixer` hook does the mixing. A plain scan
(reverse mode stacks the carry: one V_1 copy per layer, linear in depth). Decoding with a cache works as
for the baseline: the mix is at the same position, so V_1 of the new tokens is all a step needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lime_jax.model.block import Block
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.stack import StackOutput, Topology, pick_collected, remat
from lime_jax.model.tables import LayerTables


def init_value_residual_params(rng: jax.Array, cfg: ModelConfig) -> dict:
  """{'lambda_L': [L]} when learnable, else {} (the fixed lambda is a config value)."""
  del rng
  vr = cfg.value_residual
  if not vr.learnable:
    return {}
  return {"lambda_L": jnp.full((cfg.num_layers,), vr.init_lambda, cfg.pdtype)}


def run_value_residual_stack(
  cfg: ModelConfig,
  layers,
  topo_params,
  h_BTD: jax.Array,
  tables: LayerTables,
  cache: dict | None = None,
  collect: tuple[str, ...] = (),
) -> StackOutput:
  """Scans the Block with a kv_mixer that mixes V_1 (carried) into this layer's raw values."""
  L, R, H = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  if cfg.value_residual.learnable:
    lambda_L = topo_params["lambda_L"]
  else:
    lambda_L = jnp.full((L,), cfg.value_residual.init_lambda, jnp.float32)
  block = Block(cfg)

  def body(carry, xs):
    params_l, lambda_l, l, cache_l = xs
    first = {}

    def kv_mixer(raw_BTRC):
      v_BTRH = raw_BTRC[..., H:]
      v1_BTRH = jnp.where(l == 0, v_BTRH, carry["v1"].astype(v_BTRH.dtype))  # layer 0: V_1 is its own
      first["v1"] = v1_BTRH
      lam = lambda_l.astype(jnp.float32)
      mixed_BTRH = lam * v1_BTRH.astype(jnp.float32) + (1.0 - lam) * v_BTRH.astype(jnp.float32)
      mixed_BTRH = jnp.where(l == 0, v_BTRH, mixed_BTRH.astype(v_BTRH.dtype))
      return jnp.concatenate([raw_BTRC[..., :H], mixed_BTRH], axis=-1)

    h_BTD, extras = block.apply(
      {"params": params_l}, carry["h"], tables, kv_mixer=kv_mixer, cache=cache_l, layer=l
    )
    ys = {"collected": pick_collected(extras, h_BTD, collect), "cache": extras["cache"]}
    return {"h": h_BTD, "aux": carry["aux"], "v1": first["v1"].astype(carry["v1"].dtype)}, ys

  B, T = h_BTD.shape[:2]
  carry = {"h": h_BTD, "aux": {}, "v1": jnp.zeros((B, T, R, H), cfg.dtype)}
  xs = (layers, lambda_L, jnp.arange(L), cache)
  carry, ys = jax.lax.scan(remat(body, cfg.remat_policy), carry, xs)
  return StackOutput(carry["h"], carry["aux"], ys["collected"], ys["cache"])


def extra_forward_flops(cfg: ModelConfig) -> float:
  """Per-token forward FLOPs of the value mix: 3 R H per layer n >= 1 (two products and a sum)."""
  return float(3 * cfg.num_kv_heads * cfg.head_dim * (cfg.num_layers - 1))


TOPOLOGY = Topology(
  "value_residual", run_value_residual_stack, init_value_residual_params, extra_flops=extra_forward_flops
)
