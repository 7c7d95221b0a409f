"""The registries: routers, topologies and probes, each listed in one place, with one object per entry.
(A toy router and topology registered from a test file alone: tests/integration/test_registry_toys.py.)
"""

from __future__ import annotations

import dataclasses

import pytest

from lime_jax import checkpoint
from lime_jax import config as config_lib
from lime_jax.model import LimeConfig, ModelConfig, flops, lime, routers, topologies
from lime_jax.model.routers import base as routers_base
from lime_jax.model.routers import kv as kv_router
from lime_jax.model.stack import Topology
from lime_jax.probes import registry as probe_registry
from tests.conftest import tiny_model_config


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


@pytest.mark.parametrize("router", routers.NAMES)
def test_lime_stack_asks_the_router(router):
  """The 'lime' topology's functions are the router object's (no name dispatch of its own)."""
  cfg = small_cfg(router=router)
  obj = routers.get_router(router)
  topology = topologies.get_topology("lime")
  assert lime.router_of(cfg) is obj and topology.lime_router(cfg) is obj and topology.stages(cfg) is obj
  assert topology.extra_flops(cfg) == lime.mixing_flops_per_token(cfg) == obj.mixing_flops_per_token(cfg) > 0


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


# ------------------------------------------------------------------------------------------- probes
def test_every_probe_module_defines_its_probe_once():
  probes = [
    __import__(f"lime_jax.probes.{m}", fromlist=["PROBE"]).PROBE for m in probe_registry.BUILTIN_MODULES
  ]
  assert all(isinstance(p, probe_registry.Probe) for p in probes)
  assert [p.name for p in probes] == list(probe_registry.BUILTIN_MODULES)
  assert set(probe_registry.known_probes()) >= set(probe_registry.BUILTIN_MODULES)
  assert not hasattr(probe_registry, "register")
