"""Training loop: end to end, bit-identical resume, NaN stop, checkpoint compatibility, optimizer groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.train import loop as train_lib
from lime_jax.train import optimizer as opt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train_overrides):
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train_overrides)
  return config


def test_main_end_to_end(tmp_path):
  """`python -m lime_jax.main` trains a tiny config and writes every artefact the README lists."""
  workdir = tmp_path / "run"
  cmd = [
    sys.executable,
    "-m",
    "lime_jax.main",
    "--config=experiments/baseline.py:tiny",
    f"--workdir={workdir}",
    "--config.train.num_steps=4",
    "--config.model.num_layers=3",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "FLOPs/step" in proc.stdout and "Memory:" in proc.stdout and "Held-out" in proc.stdout
  for name in ("config.json", "metrics.jsonl", "compile_report.json", "final_metrics.json"):
    assert (workdir / name).exists(), name
  assert any((workdir / "tensorboard").iterdir())
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_layers"] == 3  # the override reached the run
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu_pct"} <= set(train_records[-1])
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [3, 4]


def test_resume_is_bit_identical(tmp_path):
  """2N steps straight == N steps, restart from the checkpoint, N more steps."""
  straight = train_lib.train(tiny_config(num_steps=6, checkpoint_every=3), str(tmp_path / "a")).metrics
  first = train_lib.train(tiny_config(num_steps=6, checkpoint_every=3, stop_at_step=3), str(tmp_path / "b"))
  assert first.metrics["status"] == "stopped" and first.metrics["step"] == 3
  assert int(first.state.step) == 3  # the final state comes back with the metrics
  resumed = train_lib.train(tiny_config(num_steps=6, checkpoint_every=3), str(tmp_path / "b"))
  assert resumed.metrics["step"] == 6
  assert resumed.metrics["train"]["loss"] == straight["train"]["loss"]
  for a, b in zip(
    jax.tree.leaves(resumed.state.params),
    jax.tree.leaves(ckpt_lib.restore_raw_state(str(tmp_path / "b"))[1]["params"]),
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # returned state == last checkpoint
  _, state_a = ckpt_lib.restore_raw_state(str(tmp_path / "a"))
  _, state_b = ckpt_lib.restore_raw_state(str(tmp_path / "b"))
  leaves_a, leaves_b = jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"])
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(num_steps=12, checkpoint_every=2, warmup_steps=0, grad_clip=0.0)
  config.train.learning_rate = 1e38  # Adam steps of ~lr overflow fp32 at once.
  workdir = str(tmp_path / "nan")
  with pytest.raises(train_lib.NonFiniteLossError, match="Non-finite loss"):
    train_lib.train(config, workdir)
  steps = ckpt_lib.Checkpointer(workdir).all_steps()
  for step in steps:  # every checkpoint that was kept holds finite parameters
    _, state = ckpt_lib.restore_raw_state(workdir, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_incompatible_checkpoint_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train_lib.train(tiny_config(num_steps=2, checkpoint_every=2), workdir)
  config = tiny_config(num_steps=4)
  config.model.d_model = 64
  with pytest.raises(ValueError, match=r"model\.d_model: checkpoint 32 vs config 64"):
    train_lib.train(config, workdir)


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("train.learning_rate", -1.0, r"config\.train\.learning_rate"),
    ("data.task", "nope", r"config\.data\.task"),
    ("model.num_heads", 3, r"config\.model\.d_model"),
  ],
)
def test_bad_config_fails_before_compiling(tmp_path, field, value, match):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    train_lib.build(config)


def test_unknown_preset_names_known_ones():
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  with pytest.raises(ValueError, match="known presets: default, paper, tiny"):
    baseline.get_config("nope")


def test_optimizer_groups_decay_and_router_lr():
  """No decay on norms/embeddings; the router group runs at router_lr_multiplier x lr."""
  params = {
    "embed": jnp.ones((4, 2)),
    "final_norm": {"scale": jnp.ones((2,))},
    "layers": {"wq": jnp.ones((2, 2))},
    "router": {"w": jnp.ones((2, 2))},
  }
  labels = opt_lib.param_groups(params)
  assert labels == {
    "embed": "no_decay",
    "final_norm": {"scale": "no_decay"},
    "layers": {"wq": "decay"},
    "router": {"w": "router"},
  }
  config = tiny_config(warmup_steps=0, grad_clip=0.0, weight_decay=0.5, router_lr_multiplier=10.0)
  config.train.learning_rate = 1e-2
  tx = opt_lib.make_optimizer(config.train, params)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["layers"]["wq"], -1e-2 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["embed"], 0.0)
  np.testing.assert_array_equal(updates["final_norm"]["scale"], 0.0)
  router_grads = {**grads, "router": {"w": jnp.ones((2, 2))}}
  updates, _ = tx.update(router_grads, tx.init(params), params)
  # Adam's first step moves by ~lr; the router's lr is 10x.
  np.testing.assert_allclose(updates["router"]["w"], -0.1 * np.ones((2, 2)), rtol=1e-4)


def test_lr_schedule_warmup_then_cosine():
  config = tiny_config(num_steps=110, warmup_steps=10, min_lr_ratio=0.1)
  config.train.learning_rate = 1.0
  schedule = opt_lib.lr_schedule(config.train)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 0.55, rtol=1e-5)  # halfway down the cosine
  np.testing.assert_allclose(float(schedule(110)), 0.1, rtol=1e-5)
