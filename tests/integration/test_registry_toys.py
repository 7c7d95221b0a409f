"""A new router / topology is one module plus one registry line: a toy router and a toy topology,
registered from this file alone (monkeypatch), run in the model. (The registries themselves:
tests/unit/test_registries.py.)"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax import checkpoint
from lime_jax import config as config_lib
from lime_jax.model import LimeConfig, ModelConfig, Transformer, flops, init_params, routers, topologies
from lime_jax.model.routers import v1 as v1_routers
from lime_jax.model.stack import Topology, run_plain_stack
from tests.conftest import tiny_model_config


def small_cfg(topology: str = "lime", router: str = "kv", **overrides) -> ModelConfig:
  """4 layers, GQA (R=2 < N=4), LIMe blocks of 2."""
  base = dict(num_layers=4, num_kv_heads=2, topology=topology, lime=LimeConfig(router=router, block_size=2))
  return tiny_model_config(**{**base, **overrides})


class UniformRouter(v1_routers.StaticRouter):
  """A toy router: the static router's stages with uniform weights over the sources m <= l."""

  name = "uniform"

  def routing_weights(self, router_params, cfg):
    return super().routing_weights(jax.tree.map(jnp.zeros_like, router_params), cfg)


UNIFORM = UniformRouter()


def test_a_new_router_is_one_class_and_one_registry_line(monkeypatch):
  monkeypatch.setitem(routers.REGISTRY, "uniform", f"{__name__}:UNIFORM")
  cfg = small_cfg(router="uniform")
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens_BT = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, cfg.vocab_size)
  logits_BTV, _ = Transformer(cfg).apply({"params": params}, tokens_BT)
  static = dataclasses.replace(cfg, lime=dataclasses.replace(cfg.lime, router="static"))
  zeroed = {**params, "router": {**params["router"], "w_LRM": jnp.zeros_like(params["router"]["w_LRM"])}}
  want_BTV, _ = Transformer(static).apply({"params": zeroed}, tokens_BT)
  np.testing.assert_allclose(logits_BTV, want_BTV, rtol=1e-6, atol=1e-6)
  assert checkpoint.arch_signature(_config_dict(cfg), 61)["lime.router"] == "uniform"


def _config_dict(cfg: ModelConfig):
  c = config_lib.default_config()
  c.model.topology = cfg.topology
  c.model.lime.router = cfg.lime.router
  return c.model


TOY_TOPOLOGY = Topology(
  "toy",
  lambda cfg, layers, topo_params, h_BTD, tables, cache=None, collect=(): run_plain_stack(
    cfg, layers, None, 2.0 * h_BTD, tables, cache, collect
  ),
  extra_flops=lambda cfg: 7.0,
)


def test_a_new_topology_is_one_module_and_one_registry_line(monkeypatch):
  monkeypatch.setitem(topologies.REGISTRY, "toy", f"{__name__}:TOY_TOPOLOGY")
  cfg = small_cfg("toy")
  plain = dataclasses.replace(cfg, topology="plain")
  assert flops.forward_flops_per_token(cfg, 16) == flops.forward_flops_per_token(plain, 16) + 7.0
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens_BT = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, cfg.vocab_size)
  logits_BTV, _ = Transformer(cfg).apply({"params": params}, tokens_BT)
  want_BTV, _ = Transformer(plain).apply(
    {"params": params}, tokens_BT, embeddings_BTD=2.0 * params["embed"][tokens_BT]
  )
  np.testing.assert_allclose(logits_BTV, want_BTV, rtol=1e-6, atol=1e-6)
