"""Everyday tools: experiments importable from anywhere, train() returning its state, the wandb sink,
sampling with the KV cache, the config calculator, and the sweep / compare command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model_config

from lime_jax.model import Transformer, decode, flops, init_params
from lime_jax.tools import info, sample, sweep
from lime_jax.train import loop as train_lib
from lime_jax.train import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ------------------------------------------------------------------------------------ item 7: notebooks
def test_experiments_import_from_another_directory(tmp_path):
  code = "import lime_jax.experiments.baseline as b; print(b.get_config('tiny').model.num_layers)"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str(_tiny().model.num_layers)


def test_train_returns_final_state_and_metrics(trained):
  _, result = trained
  assert isinstance(result, train_lib.TrainResult)
  assert result.metrics["status"] == "completed" and result.metrics["step"] == 2
  assert int(result.state.step) == 2 and "ce" in result.metrics["eval"]
  assert train_lib.param_count(result.state.params) == train_lib.param_count(
    jax.eval_shape(lambda r: init_params(result.run.model_cfg, r), jax.random.key(0))
  )


# ------------------------------------------------------------------------------------ item 8: wandb
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


def test_wandb_is_off_by_default_and_missing_wandb_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  config = _tiny()
  assert writers.make_wandb_sink(config, str(tmp_path)) is None  # off: wandb is never imported
  config.train.wandb.project = "lime"
  assert writers.make_wandb_sink(config, str(tmp_path), enabled=False) is None  # processes other than 0
  with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'.*train\.wandb\.project=''"):
    writers.make_wandb_sink(config, str(tmp_path))


def test_wandb_mode_is_validated():
  from lime_jax import config as config_lib

  config = _tiny()
  config.train.wandb.mode = "cloud"
  with pytest.raises(ValueError, match=r"config\.train\.wandb\.mode"):
    config_lib.validate(config)


# ------------------------------------------------------------------------------------ item 8: sampling
def test_top_p_keeps_the_smallest_set_with_mass_p():
  probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None]
  for p, keep in ((0.4, {1}), (0.6, {1, 3}), (0.8, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (1.0, set(range(5)))):
    out = np.asarray(decode.filter_logits(logits, 1.0, 0, p))[0]
    assert set(np.flatnonzero(np.isfinite(out))) == keep, p
  rng = np.random.default_rng(0)
  for _ in range(5):  # against a literal computation on random distributions
    x = rng.normal(size=(1, 40)).astype(np.float32) * 2
    p = float(rng.uniform(0.1, 0.95))
    probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    order, mass, keep = np.argsort(-probs[0]), 0.0, set()
    for i in order:
      if mass >= p:
        break
      keep.add(int(i))
      mass += probs[0, i]
    out = np.asarray(decode.filter_logits(jnp.asarray(x), 1.0, 0, p))[0]
    assert set(np.flatnonzero(np.isfinite(out))) == keep


def test_top_k_and_temperature():
  x = jnp.asarray([[0.1, 3.0, -1.0, 2.0, 0.5]])
  out = np.asarray(decode.filter_logits(x, 2.0, 2))[0]
  assert set(np.flatnonzero(np.isfinite(out))) == {1, 3}
  np.testing.assert_allclose(out[[1, 3]], [1.5, 1.0])  # divided by the temperature
  keys = jax.random.split(jax.random.key(0), 50)
  draws = [int(decode.sample_tokens(k, x, 5.0, 1)[0]) for k in keys]
  assert set(draws) == {1}  # top_k=1 is greedy at any temperature
  assert {int(decode.sample_tokens(k, x, 0.0)[0]) for k in keys} == {1}  # temperature 0 is greedy
  assert len({int(decode.sample_tokens(k, x, 5.0)[0]) for k in keys}) > 2  # high temperature spreads


def test_sampling_with_the_cache_matches_greedy_without_it():
  cfg = tiny_model_config()
  params = init_params(cfg, jax.random.key(1))
  prompt = jnp.asarray([[1, 5, 9, 13], [1, 7, 7, 2]], jnp.int32)
  model = Transformer(cfg)
  tokens = np.asarray(prompt)
  for _ in range(6):  # greedy reference: a full forward per token, no cache
    logits, _ = model.apply(
      {"params": params}, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    )
    tokens = np.concatenate([tokens, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], axis=1)
  greedy = tokens[:, 4:]
  rng = jax.random.key(3)
  np.testing.assert_array_equal(np.asarray(decode.sample(cfg, params, prompt, rng, 6, 0.0)), greedy)
  np.testing.assert_array_equal(np.asarray(decode.sample(cfg, params, prompt, rng, 6, 1.0, 1)), greedy)
  a = np.asarray(decode.sample(cfg, params, prompt, rng, 6, 3.0))
  assert (a == np.asarray(decode.sample(cfg, params, prompt, rng, 6, 3.0))).all()  # seeded
  assert a.shape == (2, 6) and not (a == greedy).all()


def test_sample_cli_on_a_checkpoint(trained):
  workdir, result = trained
  texts = sample.generate(workdir, "1+2=", temperature=0.0, max_new=5, num_samples=2)
  assert len(texts) == 2 and texts[0] == texts[1]  # greedy: every sample the same
  with pytest.raises(ValueError, match=r"--prompt='hello'.*cannot encode"):
    sample.generate(workdir, "hello")
  with pytest.raises(ValueError, match=r"--top_p=0"):
    sample.generate(workdir, "1+2=", top_p=0.0)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.sample",
      f"--workdir={workdir}",
      "--prompt=1+2=",
      "--temperature=0",
      "--max_new_tokens=5",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == f"[0] 1+2={texts[0]}"


# ------------------------------------------------------------------------------------ item 8: info
def test_info_reports_size_flops_and_memory_without_training(tmp_path):
  config = _tiny()
  got = info.config_info(config)
  run = train_lib.build(config)
  assert got["params"] == train_lib.param_count(
    jax.eval_shape(lambda r: init_params(run.model_cfg, r), jax.random.key(0))
  )
  assert got["flops_per_step_train"] == flops.train_flops_per_step(run.model_cfg, 8, config.data.seq_len)
  assert got["optimizer_state_mib"] > got["params_mib"] > 0  # Adam: two moments per parameter
  assert got["memory/temp_size_mib"] > 0 and got["memory/argument_size_mib"] > 0
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.info",
      "--config=experiments/baseline.py:tiny",
      "--config.model.num_layers=3",
      "--json",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  three = json.loads(proc.stdout)
  assert three["model"]["num_layers"] == 3 and three["params"] > got["params"]
  assert "memory/temp_size_mib" in three
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.tools.info",
      "--config=experiments/baseline.py:tiny",
      "--config.model.d_model=30",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "config.model.d_model=30" in proc.stderr


def test_info_needs_no_data_for_a_text_config():
  from lime_jax.experiments import baseline

  got = info.config_info(baseline.get_config("paper"), compile_step=False)  # no shards, no tokenizer here
  assert 1.1e9 < got["params"] < 1.3e9 and got["model"]["vocab_size"] == 50257  # docs/methods.md §1: 1.2B
  assert "config.data" in got["data_not_checked"] and "memory/temp_size_mib" not in got


# ------------------------------------------------------------------------------------ item 8: sweep CLI
def _cli(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


def test_sweep_and_compare_share_one_convention_and_print_portable_commands(tmp_path):
  config = os.path.join(REPO, "experiments", "lime_deep.py")  # absolute: printed relative to the repo
  sweep_out = _cli(
    "lime_jax.tools.sweep", f"--config={config}", "--specs=tiny,lime", f"--workdir={tmp_path}/s", "--dry_run"
  )
  assert sweep_out.returncode == 0, sweep_out.stderr[-2000:]
  assert sweep_out.stdout.split() == [
    "python",
    "-m",
    "lime_jax.main",
    "--config=experiments/lime_deep.py:tiny,lime",
    f"--workdir={tmp_path}/s/tiny-lime_s0",
    "--config.seed=0",
  ]
  compare_out = _cli(
    "lime_jax.tools.compare",
    "--config=experiments/compare_topologies.py",
    "--arms=plain,lime",
    "--seeds=0,1",
    f"--workdir={tmp_path}/c",
    "--set=train.num_steps=3",
    "--dry_run",
  )
  assert compare_out.returncode == 0, compare_out.stderr[-2000:]
  lines = compare_out.stdout.strip().splitlines()
  assert len(lines) == 4 and all(l.startswith("python -m lime_jax.main --config=experiments/") for l in lines)
  assert sys.executable not in compare_out.stdout
  missing = _cli("lime_jax.tools.compare", "--config=experiments/compare_topologies.py", "--dry_run")
  assert missing.returncode != 0 and "--workdir=DIR are required" in missing.stderr


def test_portable_path():
  here = os.getcwd()
  assert sweep.portable_path(os.path.join(here, "experiments", "x.py")) == os.path.join("experiments", "x.py")
  assert sweep.portable_path("/elsewhere/x.py") == "/elsewhere/x.py"
  assert sweep.portable_path("experiments/x.py") == "experiments/x.py"
