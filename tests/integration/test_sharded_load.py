"""In-process checks of sharded loading on this process's one device: the plan and its refusal come before
any tensor is read (`evaluate --hf`, `main`), and the one-device load is the sharded loader's. The
8-device and two-process checks run in subprocesses: tests/e2e/test_sharded_load.py."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from lime_jax import hf
from lime_jax.probes import pretrained, runner
from lime_jax.runtime import errors
from lime_jax.train import loop as train_lib
from tests.helpers import hf_numpy, hf_tiny, runs


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("hf") / "llama")
  hf_tiny.train_bpe(out, vocab_size=320)
  config = hf_numpy.llama_config(hidden=64, layers=2, heads=8, kv_heads=4, ffn=128, vocab=320)
  return hf_numpy.write_folder(out, config, hf_numpy.llama_state_dict(config))


def test_a_model_the_device_cannot_hold_is_refused_before_any_tensor_is_read(folder, tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in ("config.json", "tokenizer.json"):
    os.symlink(os.path.join(folder, name), broken / name)
  (broken / "model.safetensors").write_bytes(b"")  # reading any tensor would fail
  plan = hf.plan_load(str(broken), runner.eval_mesh())
  assert plan.total_bytes == plan.per_device_bytes > plan.replicated_bytes > 0
  with pytest.raises(
    errors.DoesNotFitError, match=r"per device on mesh data=1 fsdp=1 tensor=1 .*--mesh_fsdp=4"
  ):
    pretrained.load(str(broken), device_bytes=plan.per_device_bytes // 3)
  with pytest.raises(Exception, match="safetensors|header|deserializ"):  # fits: then the read fails
    pretrained.load(str(broken), device_bytes=plan.per_device_bytes)


def test_the_one_device_load_is_the_sharded_loader_on_one_device(folder):
  cfg, params = hf.load_pretrained(folder)
  mesh = runner.eval_mesh()
  cfg_sharded, sharded = hf.load_sharded(folder, mesh)
  assert cfg == cfg_sharded
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  sd = hf_numpy.llama_state_dict(hf.read_config(folder))
  np.testing.assert_array_equal(np.asarray(params["unembed"]), sd["lm_head.weight"].T)


def test_main_prints_the_memory_per_device_and_refuses_a_state_too_large():
  config = runs.tiny_config()
  run = train_lib.build(config)
  line = train_lib.memory_line(run)
  assert line.startswith("Memory per device: parameters ") and "mesh data=1 fsdp=1 tensor=1" in line
  state = train_lib.state_bytes(run)
  assert state["state"] > 2 * state["params"]  # Adam's two moments
  train_lib.check_memory(run, state["state"])
  with pytest.raises(errors.DoesNotFitError, match=r"train state .* config.mesh.fsdp=\d+ \(main\)"):
    train_lib.check_memory(run, state["state"] // 2)
