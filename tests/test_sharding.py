"""Sharded training on 8 fake CPU devices: the same losses and parameters on every mesh, and the rules.

The mesh runs happen in one subprocess (tests/_sharding_worker.py): the fake device count must be set
before jax starts, and the other tests run on one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lime_jax.runtime import sharding as shard_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_sharding_worker.py")
DEFAULT_JOBS = ("lime_vcr=all", "baseline=1x1x1,2x2x2,1x1x8")
SLOW_JOBS = ("baseline=all", "lime=all", "vcr=all")


def _run_worker(out_dir, jobs) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [sys.executable, WORKER, str(out_dir), *jobs],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(out_dir, "info.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("meshes")
  return out, _run_worker(out, DEFAULT_JOBS)


def _assert_same_across_meshes(out_dir, variant: str, min_meshes: int) -> None:
  arrays = np.load(os.path.join(out_dir, f"{variant}.npz"))
  by_mesh: dict[str, dict[str, np.ndarray]] = {}
  for key in arrays.files:
    mesh, name = key.split("|", 1)
    by_mesh.setdefault(mesh, {})[name] = arrays[key]
  assert len(by_mesh) >= min_meshes, sorted(by_mesh)
  ref = by_mesh.pop("1x1x1")
  assert np.all(np.isfinite(ref["loss"])) and ref["loss"][0] != ref["loss"][-1]  # it trained
  for mesh, got in by_mesh.items():
    assert got.keys() == ref.keys(), mesh
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=0, atol=1e-5, err_msg=f"{variant} {mesh}")
    for name in ref:
      np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-5, err_msg=f"{variant} {mesh} {name}")
    # The update really moved the parameters, so equality after training is not equality of the init.
  moved = max(float(np.max(np.abs(ref[k]))) for k in ref if k != "loss")
  assert moved > 0


def test_lime_and_seq_vcr_same_on_every_mesh(mesh_runs):
  """LIMe (kv router, buffer) with Seq-VCR on (1,1,1), (8,1,1), (2,4,1), (2,2,2), (1,1,8)."""
  out, info = mesh_runs
  if not info["seq_vcr_integrated"]:
    pytest.skip("config.model.seq_vcr is not there yet")
  _assert_same_across_meshes(out, "lime_vcr", 5)


def test_baseline_same_on_meshes(mesh_runs):
  out, _ = mesh_runs
  _assert_same_across_meshes(out, "baseline", 3)


def test_parameters_sharded_as_the_rules_say(mesh_runs):
  _, info = mesh_runs
  specs = info["specs_222"]["baseline"]
  assert specs["embed"] == ["tensor", "fsdp"]  # [V, D]: vocab over tensor, embed over fsdp
  assert specs["layers/wq"] == [None, "fsdp", "tensor"]  # [L, D, N, H]
  assert specs["layers/wkv"] == [None, "fsdp", "tensor"]  # [L, D, R, 2H]
  assert specs["layers/wo"] == [None, "tensor", None, "fsdp"]  # [L, N, H, D]
  assert specs["layers/mlp/w_down"] == [None, "tensor", "fsdp"]  # [L, F, D]
  assert specs["final_norm/scale"] == [] and specs["step"] == []
  assert specs["wq_shard_shape"] == [3, 16, 4, 4]  # [3, 32/2, 8/2, 4]
  mu_wq = [v for k, v in specs.items() if k.endswith("mu/layers/wq")]
  assert mu_wq == [[None, "fsdp", "tensor"]]  # Adam's moment mirrors its parameter
  assert all(v == [] for k, v in specs.items() if k.endswith("count"))
  if "lime_vcr" in info["specs_222"]:
    lime = info["specs_222"]["lime_vcr"]
    assert lime["router/w_LRMR"] == []  # the router is tiny: replicated
    assert lime["seq_vcr_proj"] == [None, "fsdp", "tensor"]
  # tensor=8 cannot split 4 kv heads: that dim falls back to replicated, the 8 query heads are split.
  assert info["specs_118"]["baseline"]["layers/wkv"] == []
  assert info["specs_118"]["baseline"]["layers/wq"] == [None, None, "tensor"]


def test_checkpoint_restores_on_other_meshes(mesh_runs):
  _, info = mesh_runs
  for mesh, result in info["checkpoint"].items():
    assert result["max_err"] == 0.0, mesh
    assert result["wq_spec"] == result["wq_expected"], mesh


def test_pure_seq_vcr_loss_does_not_change_with_the_mesh(mesh_runs):
  _, info = mesh_runs
  for variant, by_mesh in info["seq_vcr_pure"].items():
    ref = by_mesh["(1, 1, 1)"]
    for mesh, value in by_mesh.items():
      np.testing.assert_allclose(value, ref, rtol=1e-5, err_msg=f"{variant} {mesh}")


@pytest.mark.slow
def test_each_variant_on_every_mesh(tmp_path):
  """baseline, LIMe alone and Seq-VCR alone on all five meshes."""
  info = _run_worker(tmp_path, SLOW_JOBS)
  _assert_same_across_meshes(tmp_path, "baseline", 5)
  _assert_same_across_meshes(tmp_path, "lime", 5)
  if info["seq_vcr_integrated"]:
    _assert_same_across_meshes(tmp_path, "vcr", 5)


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
