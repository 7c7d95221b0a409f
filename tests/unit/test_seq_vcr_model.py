"""Seq-VCR in the config and the experiments: config errors, pauses, the experiment presets and arms,
seq_len fitting. (Seq-VCR in the model: tests/integration/test_seq_vcr_model.py.)"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax.data import pipeline, tasks
from lime_jax.data.tokenizer import PAUSE_ID
from lime_jax.train import loop as train_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
B, T, V = 6, 7, 24


def _config(**seq_vcr):
  c = config_lib.default_config()
  c.model.update(num_layers=3, d_model=16, num_heads=2, ffn_dim=32, vocab_size=V)
  c.model.seq_vcr.update(**{"enabled": True, "proj_dim": 8, **seq_vcr})
  return c


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("layers", (0,), "final block only"),
    ("layers", (3,), r"in \[-3, 2\]"),
    ("layers", (2, -1), "twice"),
    ("variant", "rows", "variant"),
    ("positions", "middle", "positions"),
    ("eta", 0.0, "eta"),
    ("proj_dim", -1, "proj_dim"),
    ("lambda2", -0.1, "lambda2"),
  ],
)
def test_config_errors_name_the_field(field, value, match):
  c = _config()
  if field == "layers" and value == (0,):
    c.model.topology = "lime"
  c.model.seq_vcr[field] = value
  with pytest.raises(ValueError, match=match) as err:
    config_lib.validate(c)
  assert "model.seq_vcr." in str(err.value)
  c = _config()
  c.train.batch_size = 1
  with pytest.raises(ValueError, match="train.batch_size"):
    config_lib.validate(c)


def test_pauses_share_one_embedding_row_and_carry_no_ce():
  c = config_lib.default_config()
  c.data.update(task="multiplication", num_pause=3)
  c.data.multiplication.num_digits = 2
  task = tasks.get_task(c.data, 0)
  for scope in ("answer", "all"):
    f = pipeline.encode_example(task.tokenizer, task.example("train", 0), 24, 3, scope)
    pauses = np.nonzero(f["inputs"] == PAUSE_ID)[0]
    assert len(pauses) == 3  # K copies of ONE token id: its embedding row is the shared pause embedding
    # No CE where the target is a pause token or </pause_start> / </pause_end>.
    assert np.all(f["loss_mask"][np.isin(f["targets"], (4, 5, 6))] == 0)
    assert np.all(f["loss_mask"][pauses] == 0)  # targets after a pause are pauses or </pause_end>


def _experiment(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "name,presets",
  [
    ("seqvcr_mult", ("default", "tiny", "4x4", "5x5")),
    ("seqvcr_arith", ("default", "tiny", "ops4", "ops5", "ops6")),
    ("seqvcr_lis", ("default", "tiny", "len50", "len80", "len100")),
  ],
)
def test_experiment_presets_and_arms_validate(name, presets, monkeypatch):
  monkeypatch.chdir(REPO)  # the official test file path is relative to the repository root
  module = _experiment(name)
  for preset in presets:
    for arm in ("vanilla", "pause", "seqvcr", "seqvcr_pause", "cot"):
      c = module.get_config(f"{preset},{arm}")
      config_lib.validate(c)
      assert c.model.seq_vcr.enabled == arm.startswith("seqvcr")
      assert (c.data.num_pause > 0) == arm.endswith("pause")
      assert c.data[c.data.task].cot == (arm == "cot")
      assert c.data.seq_len == 0  # fitted when the run is built
      need = pipeline.fit_seq_len(c)
      pipeline.check_fits(tasks.get_task(c.data, 0), c.data)
      c.data.seq_len = need - 1  # the fit is the smallest that fits
      with pytest.raises(ValueError, match="data.seq_len"):
        pipeline.check_fits(tasks.get_task(c.data, 0), c.data)
  assert set(module.SWEEPS) == {"lambdas", "proj_dim"}
  with pytest.raises(ValueError, match="Unknown arm"):
    module.get_config("default,nope")


def test_a_task_override_on_a_preset_refits_seq_len():
  """`--config.data.multiplication.num_digits=3` on a 2x2 preset: the run is built with the 3x3 length
  (the preset's seq_len is 0, fitted at build; config.json saves the fitted number)."""
  module = _experiment("seqvcr_mult")
  config = module.get_config("cpu_2x2,seqvcr_pause")
  config.data.multiplication.num_digits = 3
  task = tasks.get_task(config.data, 0)
  expected = pipeline.required_seq_len(task.tokenizer, task.longest_example(), int(config.data.num_pause))
  assert expected > pipeline.fit_seq_len(module.get_config("cpu_2x2,seqvcr_pause"))
  run = train_lib.build(config)
  assert run.config.data.seq_len == expected
  pipeline.check_fits(task, config.data)


def test_seq_len_zero_is_refused_for_text():
  config = config_lib.default_config()
  config.data.update(task="text", seq_len=0)
  with pytest.raises(ValueError, match=r"data.seq_len.*synthetic tasks"):
    config_lib.validate(config)
  config.data.update(task="arithmetic", seq_len=3)
  with pytest.raises(ValueError, match=r"data.seq_len.*at least 4 tokens, or 0"):
    config_lib.validate(config)
