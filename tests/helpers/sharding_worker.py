"""Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before jax is imported).

  python tests/helpers/sharding_worker.py OUT_DIR [variant ...]

For each variant (model config) and mesh it trains a few steps with the trainer's own jitted step
(train.jit_train_step) and writes OUT_DIR/<variant>.npz: per mesh the step losses and the final
parameters. It also writes OUT_DIR/shardings.json (specs of a few leaves on the (2,2,2) mesh, the
restored leaves' specs and max error after a checkpoint saved on (2,2,2) is restored on other meshes)
and the pure Seq-VCR loss under every mesh. tests/e2e/test_sharding_meshes.py compares the numbers.
"""

from __future__ import annotations

import json
import os
import sys
import time

# 8 fake CPU devices; the cheapest CPU code generation halves compile time (every mesh uses the same).
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")

from lime_jax import checkpoint as ckpt_lib  # noqa: E402
from lime_jax.data import pipeline  # noqa: E402
from lime_jax.experiments import baseline  # noqa: E402
from lime_jax.losses import seq_vcr  # noqa: E402
from lime_jax.runtime import sharding as shard_lib  # noqa: E402
from lime_jax.train import loop as train_lib  # noqa: E402

MESHES = ((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
NUM_STEPS = 3


def config_for(variant: str, mesh: tuple[int, int, int]):
  """Small shapes every mesh divides (heads 8, ffn 64, vocab 64, batch 16), except kv heads 4 (GQA),
  which tensor=8 cannot split: that dim falls back to replicated."""
  c = baseline.get_config("tiny")
  c.model.update(num_layers=3, d_model=32, num_heads=8, num_kv_heads=4, ffn_dim=64, vocab_size=64)
  c.train.update(batch_size=16, num_steps=NUM_STEPS, warmup_steps=1, async_checkpoint=False)
  c.data.update(prefetch=0)
  c.eval.update(batch_size=16)
  if "lime" in variant:
    c.model.topology = "lime"
    c.model.lime.router = "kv"
  if "vcr" in variant:
    c.model.seq_vcr.update(enabled=True, proj_dim=16, lambda1=1.0, lambda2=0.5)
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  return c


def has_seq_vcr_integration() -> bool:
  return "seq_vcr" in baseline.get_config("tiny").model


def build(config):
  """The trainer's Run on the first data x fsdp x tensor devices (all 8 but for the (1,1,1) mesh)."""
  m = config.mesh
  return train_lib.build(config, jax.devices()[: m.data * m.fsdp * m.tensor])


def train_few_steps(config, run, state):
  step_fn = train_lib.jit_train_step(run)
  data = pipeline.make_train_iterator(config)
  losses = []
  for _ in range(NUM_STEPS):
    state, metrics = step_fn(state, shard_lib.to_global_batch(next(data), run.batch_sharding))
    losses.append(float(metrics["loss"]))
  return run, state, losses


def flat_params(params) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
    for p, x in jax.tree_util.tree_leaves_with_path(params)
  }


def _spec_list(spec) -> list:
  return [list(a) if isinstance(a, tuple) else a for a in spec]


def spec_of(x) -> list:
  return _spec_list(x.sharding.spec)


def checkpoint_across_meshes(out_dir: str, state_222) -> dict:
  """Saves the (2,2,2) state and restores it on other meshes with their rule shardings."""
  ckpt = ckpt_lib.Checkpointer(os.path.join(out_dir, "ckpt"), async_save=False)
  ckpt.save(NUM_STEPS, state_222, None, {"step": NUM_STEPS}, force=True)
  ckpt.wait()
  ref = flat_params(state_222.params)
  result = {}
  for mesh in ((8, 1, 1), (1, 1, 8)):
    run = build(config_for("baseline", mesh))
    abstract = jax.eval_shape(lambda: train_lib.create_state(run))
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, run.state_sharding
    )
    restored = ckpt.restore(NUM_STEPS, abstract, None)
    got = flat_params(restored.params)
    result[str(mesh)] = {
      "max_err": max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref),
      "wq_spec": spec_of(restored.params["layers"]["wq"]),
      "wq_expected": _spec_list(run.state_sharding.params["layers"]["wq"].spec),
    }
  ckpt.close()
  return result


def seq_vcr_under_meshes() -> dict:
  """The pure Seq-VCR loss (both variants) on a batch sharded over data x fsdp and features over tensor."""
  x = np.random.default_rng(0).standard_normal((16, 5, 24)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 1], np.float32)
  out = {}
  for variant in seq_vcr.VARIANTS:
    fn = lambda x_NTD, m: seq_vcr.seq_vcr_loss(x_NTD, m, lambda1=1.0, lambda2=0.5, eta=1e-3, variant=variant)[
      "loss"
    ]
    values = {}
    for mesh_shape in MESHES:
      mesh = build(config_for("baseline", mesh_shape)).mesh
      x_sh = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(shard_lib.BATCH_AXES, None, "tensor"))
      )
      loss, grad = jax.jit(jax.value_and_grad(fn))(x_sh, mask)
      values[str(mesh_shape)] = [float(loss), float(np.abs(np.asarray(grad)).sum())]
    out[variant] = values
  return out


def parse_jobs(args: list[str]) -> list[tuple[str, list[tuple[int, int, int]]]]:
  """'variant=1x1x1,2x2x2' or 'variant=all' -> (variant, meshes); the first mesh must be (1,1,1)."""
  jobs = []
  for arg in args:
    variant, meshes = arg.split("=")
    shapes = (
      list(MESHES) if meshes == "all" else [tuple(int(n) for n in m.split("x")) for m in meshes.split(",")]
    )
    assert shapes[0] == (1, 1, 1), "the reference mesh (1,1,1) must come first"
    jobs.append((variant, shapes))
  return jobs


def run_variant(out_dir: str, variant: str, meshes, info: dict) -> None:
  """Trains `variant` on every mesh from the same initial state (created on (1,1,1))."""
  arrays = {}
  initial = None
  for mesh in meshes:
    t0 = time.perf_counter()
    config = config_for(variant, mesh)
    run = build(config)
    if initial is None:
      initial = jax.device_get(train_lib.create_state(run))
    state = jax.device_put(initial, run.state_sharding)
    _, state, losses = train_few_steps(config, run, state)
    info.setdefault("seconds", {})[f"{variant} {mesh}"] = round(time.perf_counter() - t0, 1)
    tag = "x".join(map(str, mesh))
    arrays[f"{tag}|loss"] = np.asarray(losses)
    for k, v in flat_params(state.params).items():
      arrays[f"{tag}|{k}"] = v
    if mesh == (2, 2, 2):
      info.setdefault("specs_222", {})[variant] = leaf_specs(state)
    if mesh == (1, 1, 8):
      info.setdefault("specs_118", {})[variant] = leaf_specs(state)
    if mesh == (2, 2, 2) and variant == "baseline":
      info["checkpoint"] = checkpoint_across_meshes(out_dir, state)
  np.savez(os.path.join(out_dir, f"{variant}.npz"), **arrays)


def leaf_specs(state) -> dict:
  """Specs (and one shard shape) of a few parameters and optimizer moments."""
  specs = {
    jax.tree_util.keystr(p, simple=True, separator="/"): _spec_list(x.sharding.spec)
    for p, x in jax.tree_util.tree_leaves_with_path(state.params)
  }
  for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state):
    name = jax.tree_util.keystr(p, simple=True, separator="/")
    if name.endswith(("mu/layers/wq", "nu/embed", "count")):
      specs["opt_state/" + name] = _spec_list(x.sharding.spec)
  specs["step"] = _spec_list(state.step.sharding.spec)
  specs["wq_shard_shape"] = list(state.params["layers"]["wq"].addressable_shards[0].data.shape)
  return specs


def main(out_dir: str, jobs) -> None:
  assert jax.device_count() == 8, jax.devices()
  info: dict = {"seq_vcr_integrated": has_seq_vcr_integration()}
  for variant, meshes in jobs:
    if "vcr" in variant and not info["seq_vcr_integrated"]:
      continue
    run_variant(out_dir, variant, meshes, info)
  t0 = time.perf_counter()
  info["seq_vcr_pure"] = seq_vcr_under_meshes()
  info.setdefault("seconds", {})["seq_vcr_pure"] = round(time.perf_counter() - t0, 1)
  with open(os.path.join(out_dir, "info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], parse_jobs(sys.argv[2:]))
