"""Sharding rules on one device: logical axes to specs, every parameter ruled, optimizer moments, and
the collective counts of the comm-ops benchmark's HLO parser."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from lime_jax.runtime import sharding as shard_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


# ------------------------------------------------------------------------------- rules (one device)
def test_logical_to_spec_rules_and_fallbacks():
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  assert shard_lib.logical_to_spec(("batch", "length", "embed"), (8, 4, 6), sizes) == P(("data", "fsdp"))
  assert shard_lib.logical_to_spec(("layers", "embed", "heads", "kv"), (3, 32, 8, 4), sizes) == P(
    None, "fsdp", "tensor"
  )
  # 61 is not divisible by tensor=2: replicated; embed still takes fsdp.
  assert shard_lib.logical_to_spec(("vocab", "embed"), (61, 32), sizes) == P(None, "fsdp")
  # Batch 6 on data x fsdp = 4 does not divide: replicated.
  assert shard_lib.logical_to_spec(("batch", "length"), (6, 4), sizes) == P()
  # Size-1 mesh axes are dropped; a partially size-1 tuple keeps the rest.
  assert shard_lib.logical_to_spec(("batch",), (8,), {"data": 1, "fsdp": 4, "tensor": 1}) == P("fsdp")
  with pytest.raises(ValueError, match="rank"):
    shard_lib.logical_to_spec(("batch",), (8, 4), sizes)


def test_every_parameter_of_every_router_has_logical_axes():
  from lime_jax.model import ModelConfig, init_params
  from lime_jax.model.model_config import LimeConfig

  for topology, router, tie in (
    ("plain", "kv", False),
    ("lime", "kv", True),
    ("lime", "static", True),
    ("lime", "dynamic", True),
    ("lime", "top_p", True),
  ):
    cfg = ModelConfig(
      vocab_size=16,
      num_layers=2,
      d_model=16,
      num_heads=2,
      num_kv_heads=2,
      ffn_dim=32,
      topology=topology,
      tie_embeddings=tie,
      lime=LimeConfig(router=router),
    )
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    axes = shard_lib.param_logical_axes(params)
    assert len(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))) == len(jax.tree.leaves(params))
    assert shard_lib.unruled_params(params) == []


def test_every_topology_and_seq_vcr_parameter_has_a_rule():
  """A new parameter outside params['router'] needs a PARAM_AXES entry (else it is replicated)."""
  from lime_jax import config as config_lib
  from lime_jax.model import ModelConfig, init_params

  for topology in config_lib.TOPOLOGIES:
    config = config_lib.default_config()
    config.model.update(vocab_size=16, num_layers=2, d_model=16, num_heads=2, ffn_dim=32, topology=topology)
    if "seq_vcr" in config.model:
      config.model.seq_vcr.update(enabled=True, proj_dim=8)
    cfg = ModelConfig.from_config(config.model)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    assert shard_lib.unruled_params(params) == [], topology


def test_constrain_is_a_no_op_outside_a_mesh():
  x = jnp.ones((4, 3))
  assert shard_lib.constrain(x, ("batch", "embed")) is x
  jaxpr = jax.make_jaxpr(lambda y: shard_lib.constrain(y, ("batch", "embed")))(x)
  assert "sharding_constraint" not in str(jaxpr)
  mesh = jax.make_mesh((1, 1, 1), shard_lib.MESH_AXES)
  with shard_lib.activation_mesh(mesh):
    jaxpr = jax.make_jaxpr(lambda y: shard_lib.constrain(y, ("batch", "embed")))(x)
  assert "sharding_constraint" in str(jaxpr)


def test_optimizer_moments_take_their_parameters_rule():
  mesh = jax.make_mesh((1, 1, 1), shard_lib.MESH_AXES)
  tree = {
    "params": {"layers": {"wq": jax.ShapeDtypeStruct((2, 4, 2, 2), jnp.float32)}},
    "opt": {
      "mu": {"layers": {"wq": jax.ShapeDtypeStruct((2, 4, 2, 2), jnp.float32)}},
      "count": jax.ShapeDtypeStruct((), jnp.int32),
      "odd": jax.ShapeDtypeStruct((2, 4), jnp.float32),
    },
  }
  shardings = shard_lib.tree_shardings(mesh, tree)
  assert shardings["opt"]["count"].spec == P() and shardings["opt"]["odd"].spec == P()
  sizes = {"data": 1, "fsdp": 2, "tensor": 2}
  axes = shard_lib.axes_for_path(("opt", "mu", "layers", "wq"), 4)
  assert shard_lib.logical_to_spec(axes, (2, 4, 2, 2), sizes) == P(None, "fsdp", "tensor")
  assert shard_lib.axes_for_path(("opt", "mu", "unembed"), 2) == ("embed", "vocab")
  assert shard_lib.axes_for_path(("opt", "mu", "layers", "wq"), 3) is None  # rank mismatch: no rule


def test_comm_ops_counts_collectives_per_executed_step():
  """The benchmark's HLO parser: ops in a while body count trip-count times, bytes from result shapes."""
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import comm_ops

  hlo = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %ag = f32[4,8]{1,0} all-gather(f32[2,8]{1,0} %x), dimensions={0}
  ROOT %t = (s32[], f32[4,8]) tuple(%i, %ag)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %ar = (f32[4,8]{1,0}, bf16[16]{0}) all-reduce(%a, %b), to_apply=%add
  %w = (s32[], f32[4,8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %rs = f32[1,8]{1,0} reduce-scatter(%a), dimensions={0}, to_apply=%add
}
"""  # noqa: E501 (an HLO line as XLA prints it)
  counts = comm_ops.count_collectives(hlo)
  assert counts["all-gather"] == {"count": 3, "bytes": 3 * 4 * 8 * 4}
  assert counts["all-reduce"] == {"count": 1, "bytes": 4 * 8 * 4 + 16 * 2}
  assert counts["reduce-scatter"] == {"count": 1, "bytes": 8 * 4}
  assert counts["all-to-all"]["count"] == 0
