"""LIMe (docs/methods.md §2), the fast checks: the stack cases cover every router, group sizes, top-p,
the refusal of an identity init, mixing FLOPs. (Every router against the unrolled references, the router
analysis: tests/integration/test_lime_exactness.py.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import (
  LimeConfig,
  ModelConfig,
  get_topology,
  init_params,
  routers,
  topologies,
)
from lime_jax.model.lime import flops_per_token, mixing_flops_per_token, router_of
from lime_jax.model.routers.v1 import top_p_keep


def lime_cfg(router: str = "kv", **overrides) -> ModelConfig:
  """A small LIMe model with GQA (R=2 < N=4), 5 layers and blocks of 2 (so 3 blocks, one partial)."""
  base = dict(
    vocab_size=61,
    num_layers=5,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    ffn_dim=64,
    init_std=0.1,
    topology="lime",
    lime=LimeConfig(router=router, block_size=2, top_p=0.6, static_init_std=1.0),
  )
  base.update(overrides)
  return ModelConfig(**base)


# --------------------------------------------------------------------- the stage contract (exactness)
def stack_cases() -> list[tuple[str, str | None]]:
  """(topology, router) for every registered topology run on lime_stack (`Topology.stages`): with a LIMe
  router, once per registered router; else once (router None). Read from the registries alone."""
  cases = []
  for name in topologies.REGISTRY:
    topology = get_topology(name)
    if topology.stages is not None:
      cases += [(name, r) for r in routers.REGISTRY] if topology.lime_router else [(name, None)]
  return cases


STACK_CASES = stack_cases()


def test_stack_cases_cover_every_router_and_the_denseformer():
  assert {r for t, r in STACK_CASES if t == "lime"} == set(routers.REGISTRY)
  assert ("denseformer", None) in STACK_CASES


def test_group_size_choice():
  group_size = lambda c: router_of(c).group_size(c)
  auto = lambda L, S=4, policy="none": group_size(
    lime_cfg("kv", num_layers=L, remat_policy=policy, lime=LimeConfig(block_size=S))
  )
  assert [auto(L) for L in (8, 16, 32, 64, 128)] == [4, 4, 4, 8, 8]
  # With remat the backward pass parks 2G slots: a group of 4 at 8 layers would take the whole buffer.
  assert [auto(L, policy="full") for L in (8, 12, 16, 64)] == [1, 1, 4, 8]
  assert auto(5, S=2) == 1  # the block size does not divide the depth: per-layer schedule
  assert group_size(lime_cfg("static", num_layers=8)) == 1  # v1 routers: per-layer schedule
  with pytest.raises(ValueError, match="group_size"):
    group_size(lime_cfg("kv", num_layers=8, lime=LimeConfig(block_size=2, group_size=3)))


def test_top_p_keep():
  a = jnp.array([[0.05, 0.5, 0.15, 0.3], [1.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(top_p_keep(a, 0.7), [[False, True, False, True], [True, False, False, False]])
  np.testing.assert_array_equal(top_p_keep(a[:1], 0.9), [[False, True, True, True]])


def test_v1_identity_init_is_refused():
  cfg = lime_cfg("static", lime=LimeConfig(router="static", init="identity"))
  with pytest.raises(ValueError, match="router='kv' only"):  # traced only: the refusal draws no parameter
    jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def test_mixing_flops():
  cfg = lime_cfg("kv")
  L, R, H = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  assert mixing_flops_per_token(cfg) == 4 * (R * H) * R * sum(l + 1 for l in range(1, L))
  plain = dataclasses.replace(cfg, topology="plain")
  assert flops_per_token(cfg, 16) - flops_per_token(plain, 16) == 3 * mixing_flops_per_token(cfg)
