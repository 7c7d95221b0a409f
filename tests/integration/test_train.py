"""The training loop in process: bit-identical resume, NaN stop, checkpoint compatibility, the returned
state and metrics, the wandb sink, and the fast CPU init compile."""

from __future__ import annotations

import os
import sys
import types

import jax
import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.model import init_params
from lime_jax.train import loop as train_lib
from lime_jax.train import writers
from tests.helpers.runs import tiny_config


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


def _tiny(num_steps: int = 2):
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(num_steps=num_steps, checkpoint_every=num_steps, async_checkpoint=False, log_every=1)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step tiny arithmetic run trained in-process: (workdir, TrainResult)."""
  workdir = str(tmp_path_factory.mktemp("tools") / "run")
  return workdir, train_lib.train(_tiny(), workdir)


def test_train_returns_final_state_and_metrics(trained):
  _, result = trained
  assert isinstance(result, train_lib.TrainResult)
  assert result.metrics["status"] == "completed" and result.metrics["step"] == 2
  assert int(result.state.step) == 2 and "ce" in result.metrics["eval"]
  assert train_lib.param_count(result.state.params) == train_lib.param_count(
    jax.eval_shape(lambda r: init_params(result.run.model_cfg, r), jax.random.key(0))
  )


# -------------------------------------------------------------------------------------------- wandb
class _FakeRun:
  def __init__(self, kwargs):
    self.kwargs, self.logged, self.finished = kwargs, [], False

  def log(self, data, step=None):
    self.logged.append((step, dict(data)))

  def finish(self):
    self.finished = True


def _fake_wandb(monkeypatch) -> list[_FakeRun]:
  runs: list[_FakeRun] = []
  module = types.ModuleType("wandb")
  module.init = lambda **kwargs: runs.append(_FakeRun(kwargs)) or runs[-1]
  monkeypatch.setitem(sys.modules, "wandb", module)
  return runs


def test_wandb_sink_logs_train_and_eval_and_resumes_the_same_run(tmp_path, monkeypatch):
  runs = _fake_wandb(monkeypatch)
  config = _tiny()
  config.train.wandb.project = "lime"
  config.train.wandb.mode = "offline"
  workdir = str(tmp_path / "w")
  train_lib.train(config, workdir)
  (run,) = runs
  assert run.kwargs["project"] == "lime" and run.kwargs["mode"] == "offline" and run.finished
  assert run.kwargs["name"] == "w" and run.kwargs["resume"] == "allow"
  assert run.kwargs["config"]["train"]["wandb"]["project"] == "lime"
  steps = {step: data for step, data in run.logged}
  assert "train/loss" in steps[1] and "eval/ce" in steps[2]
  sink = writers.make_wandb_sink(config, workdir)  # a resumed run: the id saved in the workdir
  assert runs[-1].kwargs["id"] == run.kwargs["id"] == (tmp_path / "w" / "wandb_id.txt").read_text()
  sink.close()


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _tiny_config(**train_overrides):
  sys.path.insert(0, REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train_overrides)
  return config


def test_fast_init_compile_draws_the_same_parameters():
  """The CPU init program compiled without LLVM optimisations gives the default compile's values up to
  float rounding (the same distributions and seeds)."""
  run = train_lib.build(_tiny_config())
  fast = train_lib.create_state(run)

  def init(rng):
    return train_lib.step_lib.init_train_state(train_lib.init_params(run.model_cfg, rng), run.optimizer)

  default = jax.jit(init, out_shardings=run.state_sharding)(jax.random.key(run.config.seed))
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
