"""The evaluation binary end to end on a checkpoint written by `main`, its errors, 8 fake devices, and a
non-zero exit on incompatible probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax.probes import registry, runner

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
PROBE_FLAGS = [
  "--lengths=2,6",
  "--num_examples=8",
  "--collapse_ns=1,2,6,11",
  "--oversquash_length=8",
  "--separability_tokens=0,1,2",
]


def _run(args, env=None, timeout=400):
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
  )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny model trained by `python -m lime_jax.main` on the copying task (2 checkpoints)."""
  workdir = tmp_path_factory.mktemp("eval") / "run"
  proc = _run(
    [
      "-m",
      "lime_jax.main",
      "--config=experiments/baseline.py:tiny",
      f"--workdir={workdir}",
      "--config.train.num_steps=4",
      "--config.train.checkpoint_every=2",
      "--config.data.task=copying",
      "--config.data.seq_len=64",
      "--config.data.copying.max_length=8",
    ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def one_device(run_dir):
  proc = _run(
    ["-m", "lime_jax.evaluate", f"--workdir={run_dir}", "--probes=all", "--skip_incompatible", *PROBE_FLAGS]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_evaluate_end_to_end(run_dir, one_device):
  out = run_dir / "eval" / "4"
  results = json.loads((out / "results.json").read_text())
  assert results["step"] == "4" and results["task"] == "copying"
  assert set(results["probes"]) == set(registry.known_probes())
  for name in results["probes"]:
    for image in results["images"][name]:
      assert (out / image).stat().st_size > 1000, image
  collapse = results["probes"]["collapse"]["metrics"]
  assert collapse["ns"] == [1, 2, 6, 11] and collapse["separator"] == ","
  assert "float32/ones_commas" in collapse["families"] and "bfloat16/repeated_ones" in collapse["families"]
  copying = results["probes"]["copying"]["metrics"]
  assert copying["lengths"] == [2, 6] and copying["train_max_length"] == 8
  assert all(0.0 <= a <= 1.0 for accs in copying["accuracy"].values() for a in accs)
  assert len(results["probes"]["entropy"]["metrics"]["hidden"]["effective_rank"]) == 2
  assert "skipped" in results["probes"]["router"]["metrics"]  # not a LIMe run
  summary = (out / "summary.md").read_text()
  assert "## collapse" in summary and "![collapse_repeated_ones.png](collapse_repeated_ones.png)" in summary
  names = list(registry.known_probes())  # the progress line counts every requested probe
  assert f"[{names.index('router') + 1}/{len(names)} router]" in one_device.stderr


def test_eight_fake_devices_give_the_same_results(run_dir, one_device, tmp_path):
  """Restoring onto 8 CPU devices (batches split over them) gives the results of 1 device."""
  copy = tmp_path / "run8"
  subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
  proc = _run(
    ["-m", "lime_jax.evaluate", f"--workdir={copy}", "--probes=collapse,copying,entropy", *PROBE_FLAGS],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  eight = json.loads((copy / "eval" / "4" / "results.json").read_text())
  one = json.loads((run_dir / "eval" / "4" / "results.json").read_text())
  assert eight["devices"] == "8 x cpu" and one["devices"] == "1 x cpu"

  def numbers(x):
    if isinstance(x, dict):
      return [v for k in sorted(x) for v in numbers(x[k])]
    if isinstance(x, list):
      return [v for item in x for v in numbers(item)]
    return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []

  for probe in ("collapse", "copying", "entropy"):
    a, b = numbers(one["probes"][probe]["metrics"]), numbers(eight["probes"][probe]["metrics"])
    assert len(a) == len(b) > 10
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=probe)


def test_errors_are_clear(run_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt_lib.restore_params(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    ckpt_lib.restore_params(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=r"--step=3 not found.*\[2, 4\]"):
    ckpt_lib.restore_params(str(run_dir), step=3)
  with pytest.raises(ValueError, match="unknown probe 'bogus'"):
    runner.evaluate(str(run_dir), ["collapse", "bogus"])
  proc = _run(["-m", "lime_jax.evaluate", f"--workdir={run_dir}", "--probes=bogus"], timeout=120)
  assert proc.returncode != 0 and "unknown probe 'bogus'" in proc.stderr


def test_shape_mismatch_is_reported(run_dir, tmp_path):
  copy = tmp_path / "tampered"
  subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
  meta_path = copy / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  meta["config"]["model"]["ffn_dim"] = 48
  meta_path.write_text(json.dumps(meta))
  ckpt_lib.write_digests(str(copy / "checkpoints" / "4"))  # a consistent step, not a damaged one
  with pytest.raises(
    ckpt_lib.CheckpointMismatchError,
    match=r"checkpoints/4 was made with a different model config \(model\.ffn_dim: checkpoint 64 vs "
    r"config 48\)",
  ):
    ckpt_lib.restore_params(str(copy))


def test_restored_params_equal_the_checkpoint(run_dir):
  import jax

  step, config, model_cfg, params = ckpt_lib.restore_params(str(run_dir), step=2)
  _, raw = ckpt_lib.restore_raw_state(str(run_dir), 2)
  assert step == 2 and config["data"]["task"] == "copying" and model_cfg.num_layers == 2
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(raw["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_exits_non_zero_on_incompatible_probes(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "lime_jax.evaluate",
    f"--workdir={tmp_path}",
    "--random_init",
    "--config=experiments/baseline.py:tiny",
    "--probes=copying,counting",
    "--lengths=2",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "probe 'copying' cannot run" in proc.stderr and "probe 'counting' cannot run" in proc.stderr
  assert "Probes that can run on it" in proc.stderr and "collapse" in proc.stderr
