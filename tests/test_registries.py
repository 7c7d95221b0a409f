"""The registries: routers, topologies and probes, each listed in one place, with one object per entry.

A new router / topology is one module plus one registry line: the toys below are registered from this
file alone (monkeypatch), without editing any core module.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model_config

from lime_jax import checkpoint
from lime_jax import config as config_lib
from lime_jax.model import LimeConfig, ModelConfig, Transformer, flops, init_params, lime, routers, topologies
from lime_jax.model.routers import base as routers_base
from lime_jax.model.routers import kv as kv_router
from lime_jax.model.routers import v1 as v1_routers
from lime_jax.model.stack import Topology, run_plain_stack
from lime_jax.probes import registry as probe_registry


def small_cfg(topology: str = "lime", router: str = "kv", **overrides) -> ModelConfig:
  """4 layers, GQA (R=2 < N=4), LIMe blocks of 2."""
  base = dict(num_layers=4, num_kv_heads=2, topology=topology, lime=LimeConfig(router=router, block_size=2))
  return tiny_model_config(**{**base, **overrides})


# ------------------------------------------------------------------------------------------ routers
def test_every_router_choice_has_its_object_and_vice_versa():
  assert set(config_lib.LIME_ROUTERS) == set(routers.REGISTRY) == set(routers.NAMES)
  for name in routers.NAMES:
    router = routers.get_router(name)
    assert isinstance(router, routers_base.Router) and router.name == name


def test_unknown_router_names_the_field_and_the_choices():
  with pytest.raises(ValueError, match=r"config.model.lime.router='nope'.*'dynamic'.*'kv'"):
    routers.get_router("nope")


def test_registries_import_nothing_heavy():
  """lime_jax.config may read the registries' names: importing them must not import Flax or the model."""
  code = (
    "import sys; from lime_jax.model import routers, topologies; "
    "print(sorted(m for m in ('flax', 'lime_jax.model.lime', 'lime_jax.model.transformer') "
    "if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


@pytest.mark.parametrize("router", routers.NAMES)
def test_lime_stack_asks_the_router(router):
  """The 'lime' topology's functions are the router object's (no name dispatch of its own)."""
  cfg = small_cfg(router=router)
  obj = routers.get_router(router)
  topology = topologies.get_topology("lime")
  assert lime.router_of(cfg) is obj and topology.lime_router(cfg) is obj and topology.stages(cfg) is obj
  assert topology.extra_flops(cfg) == lime.mixing_flops_per_token(cfg) == obj.mixing_flops_per_token(cfg) > 0


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


def test_auto_group_rule_says_where_it_was_measured_and_explicit_groups_override_it():
  assert "CPU" in kv_router.AUTO_GROUP_RULE.measured_on and "jax" in kv_router.AUTO_GROUP_RULE.measured_on
  cfg = small_cfg(num_layers=8, remat_policy="full", lime=LimeConfig(block_size=4))
  group_size = lambda G: kv_router.KV.group_size(
    dataclasses.replace(cfg, lime=dataclasses.replace(cfg.lime, group_size=G))
  )
  assert group_size(0) == 1  # auto: 2G parked slots of a group of 4 would fill the buffer
  for G in (1, 4, 8):
    assert group_size(G) == G
  for G in (-1, 2, 3):
    with pytest.raises(ValueError, match="config.model.lime.group_size"):
      group_size(G)


# --------------------------------------------------------------------------------------- topologies
def test_every_topology_choice_has_its_object_and_vice_versa():
  assert set(config_lib.TOPOLOGIES) == set(topologies.REGISTRY) == set(topologies.NAMES)
  for name in (*topologies.REGISTRY, *topologies.REFERENCES):
    topology = topologies.get_topology(name)
    assert isinstance(topology, Topology) and topology.name == name
  assert not set(topologies.REFERENCES) & set(topologies.REGISTRY)


def test_unknown_topology_names_the_field_and_the_choices():
  with pytest.raises(ValueError, match=r"config.model.topology='nope'.*'denseformer'.*'plain'") as error:
    topologies.get_topology("nope")
  assert "lime_scan" not in str(error.value)  # the references are not config choices


@pytest.mark.parametrize("router", routers.NAMES)
def test_lime_scan_counts_the_mixing_flops_of_lime(router):
  """model/flops.py reads only `Topology.extra_flops`: the plain-scan reference has LIMe's count."""
  cfg = small_cfg(router=router)
  lime_flops = flops.forward_flops_per_token(cfg, 16)
  assert flops.forward_flops_per_token(dataclasses.replace(cfg, topology="lime_scan"), 16) == lime_flops
  plain = flops.forward_flops_per_token(dataclasses.replace(cfg, topology="plain"), 16)
  assert lime_flops - plain == lime.mixing_flops_per_token(cfg) > 0


def _config_dict(cfg: ModelConfig):
  c = config_lib.default_config()
  c.model.topology = cfg.topology
  c.model.lime.router = cfg.lime.router
  return c.model


def test_checkpoint_signature_comes_from_the_topology():
  assert checkpoint.arch_signature(_config_dict(small_cfg(router="top_p")), 61)["lime.router"] == "top_p"
  for name in ("plain", "denseformer"):
    assert "lime.router" not in checkpoint.arch_signature(_config_dict(small_cfg(name)), 61)


def test_router_topology_flag_drives_the_router_probe_and_analysis():
  assert [
    n
    for n in (*topologies.REGISTRY, *topologies.REFERENCES)
    if topologies.get_topology(n).lime_router is not None
  ] == ["lime", "lime_scan"]


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


# ------------------------------------------------------------------------------------------- probes
def test_every_probe_module_defines_its_probe_once():
  probes = [
    __import__(f"lime_jax.probes.{m}", fromlist=["PROBE"]).PROBE for m in probe_registry.BUILTIN_MODULES
  ]
  assert all(isinstance(p, probe_registry.Probe) for p in probes)
  assert [p.name for p in probes] == list(probe_registry.BUILTIN_MODULES)
  assert set(probe_registry.known_probes()) >= set(probe_registry.BUILTIN_MODULES)
  assert not hasattr(probe_registry, "register")
