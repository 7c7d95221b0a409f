"""Sharded on 8 fake CPU devices, in subprocesses (the fake device count must be set before jax starts):
the same training losses and parameters on every mesh (tests/helpers/sharding_worker.py), the rules'
shardings, checkpoints restored on other meshes, and the Seq-VCR loss and gradient under batch sharding."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------ Seq-VCR loss, batch sharding
_SHARDING_SCRIPT = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from lime_jax.losses import seq_vcr_loss

  jax.config.update("jax_default_matmul_precision", "highest")
  assert jax.device_count() == 8, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ("data",))
  g = np.random.default_rng(0)
  cases = [("per_position", (16, 5, 24), "T"), ("per_position", (16, 3, 6), "T"),
           ("batch_length", (16, 4, 12), "NT"), ("batch_length", (8, 2, 40), "NT")]
  for variant, shape, mask_kind in cases:
    x = (g.standard_normal(shape) @ (np.eye(shape[2]) + 0.3 * g.standard_normal(shape[2:] * 2))
         ).astype(np.float32)
    mask = (np.array([1] * (shape[1] - 1) + [0], np.float32) if mask_kind == "T"
            else (g.random(shape[:2]) < 0.7).astype(np.float32))
    def f(x, mask):
      return seq_vcr_loss(x, mask, lambda1=1.0, lambda2=0.5, variant=variant)["loss"]
    step = jax.jit(jax.value_and_grad(f))
    one = jax.devices()[0]
    v1, g1 = step(jax.device_put(x, one), jax.device_put(mask, one))
    batch = NamedSharding(mesh, P("data"))
    x8 = jax.device_put(x, batch)
    m8 = jax.device_put(mask, batch if mask_kind == "NT" else NamedSharding(mesh, P()))
    v8, g8 = step(x8, m8)
    assert len(g8.sharding.device_set) == 8, g8.sharding
    np.testing.assert_allclose(float(v8), float(v1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-6,
                               atol=1e-6 * float(np.abs(np.asarray(g1)).max()))
    print("ok", variant, shape, float(v1), float(v8))
""")


def test_value_and_gradient_do_not_depend_on_batch_sharding():
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
  )
  result = subprocess.run(
    [sys.executable, "-c", _SHARDING_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count("ok ") == 4, result.stdout


WORKER = os.path.join(REPO, "tests", "helpers", "sharding_worker.py")
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
