"""Cross-layer topologies (docs/methods.md §3): DenseFormer, Hyper-Connections, value residual: parameter
counts and buffers, extra FLOPs, config validation. (Against the unrolled references:
tests/integration/test_topologies_exactness.py.)
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

from lime_jax import config as config_lib
from lime_jax.model import LimeConfig, ModelConfig, flops, get_topology, init_params
from lime_jax.model.denseformer import dwa_param_count
from lime_jax.model.hyper_connections import hc_param_count
from lime_jax.model.model_config import DenseFormerConfig, HyperConnectionsConfig, ValueResidualConfig

TOPOLOGIES = ("plain", "lime", "denseformer", "hyper_connections", "value_residual")
# (topology, sub-config overrides) pairs covering each method's options.
VARIANTS = {
  "plain": ("plain", {}),
  "lime": ("lime", {}),
  "dwa": ("denseformer", {}),
  "dwa_k2_p2": ("denseformer", {"denseformer": DenseFormerConfig(dilation=2, period=2, block_size=2)}),
  "dwa_k3": ("denseformer", {"denseformer": DenseFormerConfig(dilation=3, block_size=4)}),
  "hc_dynamic": ("hyper_connections", {}),
  "hc_static3": ("hyper_connections", {"hyper_connections": HyperConnectionsConfig(3, dynamic=False)}),
  "vres_fixed": ("value_residual", {}),
  "vres_learned": ("value_residual", {"value_residual": ValueResidualConfig(learnable=True)}),
}


def topo_cfg(name: str, **overrides) -> ModelConfig:
  """5 layers, GQA (R=2 < N=4); DenseFormer history blocks of 2 slots (3 blocks, one partial)."""
  topology, extra = VARIANTS[name]
  base = dict(
    vocab_size=61,
    num_layers=5,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    ffn_dim=64,
    init_std=0.1,
    topology=topology,
    lime=LimeConfig(block_size=2),
    denseformer=DenseFormerConfig(block_size=2),
  )
  base.update(extra)
  base.update(overrides)
  return ModelConfig(**base)


def test_parameter_counts():
  """DenseFormer L(L+3)/2 at dilation 1, period 1 (the paper's d(d+3)/2, d = depth); HC 2L n(n+2)
  static, + 2L(D(n+2) + 2) dynamic; value residual L stored lambdas (learnable) or none."""
  count = lambda cfg: sum(
    x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
  )
  plain = count(topo_cfg("plain"))
  L, D = 5, 32
  assert count(topo_cfg("dwa")) - plain == L * (L + 3) // 2 == dwa_param_count(topo_cfg("dwa"))
  for L_, k, p in [(12, 1, 1), (12, 2, 1), (12, 3, 2), (7, 2, 3)]:
    cfg = topo_cfg("dwa", num_layers=L_, denseformer=DenseFormerConfig(dilation=k, period=p))
    expected = sum((i + 1) // k + 1 for i in range(L_) if (i + 1) % p == 0)
    assert dwa_param_count(cfg) == expected
  assert dwa_param_count(topo_cfg("dwa", num_layers=48)) == 48 * 51 // 2
  n = 4
  assert count(topo_cfg("hc_dynamic")) - plain == 2 * L * (n * (n + 2) + D * (n + 2) + 2)
  assert count(topo_cfg("hc_static3")) - plain == 2 * L * 3 * 5 == hc_param_count(topo_cfg("hc_static3"))
  assert hc_param_count(topo_cfg("hc_dynamic")) == 2 * L * (n * (n + 2) + D * (n + 2) + 2)
  assert count(topo_cfg("vres_fixed")) == plain
  assert count(topo_cfg("vres_learned")) - plain == L


def test_topology_parameters_are_distinct_buffers():
  """No two parameter leaves share a buffer (a donated train state would pass one buffer twice)."""
  for name in ("dwa", "hc_dynamic", "vres_learned"):
    cfg = topo_cfg(name)
    leaves = jax.tree.leaves(get_topology(cfg.topology).init_params(jax.random.PRNGKey(0), cfg))
    assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)


def test_extra_flops():
  cfg = topo_cfg("dwa")
  plain = dataclasses.replace(cfg, topology="plain")
  extra = lambda c: flops.forward_flops_per_token(c, 16) - flops.forward_flops_per_token(plain, 16)
  L, D = cfg.num_layers, cfg.d_model
  assert extra(cfg) == 2 * D * L * (L + 3) // 2
  n = 4
  hc = topo_cfg("hc_dynamic")
  assert extra(hc) == 2 * L * (2 * n * (n + 1) * D + 2 * n * D + 2 * n * D * (n + 2)) + n * D
  assert extra(topo_cfg("vres_fixed")) == 3 * cfg.num_kv_heads * cfg.head_dim * (L - 1)
  assert extra(topo_cfg("lime")) > 0


def test_config_validation_names_the_field():
  c = config_lib.default_config()
  assert set(TOPOLOGIES) == set(config_lib.TOPOLOGIES)
  for field, value in [
    ("denseformer.dilation", 0),
    ("denseformer.period", 0),
    ("hyper_connections.num_streams", 0),
    ("value_residual.init_lambda", 1.5),
  ]:
    bad = config_lib.default_config()
    sub, key = field.split(".")
    bad.model[sub][key] = value
    with pytest.raises(ValueError, match=f"config.model.{field}="):
      config_lib.validate(bad)
  c.model.topology = "hyper_connections"
  c.model.hyper_connections.num_streams = 2
  config_lib.validate(c)
  cfg = ModelConfig.from_config(c.model, vocab_size=11)
  assert cfg.hyper_connections == HyperConnectionsConfig(num_streams=2, dynamic=True)
