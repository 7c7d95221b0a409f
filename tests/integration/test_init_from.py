"""Fine-tuning from a checkpoint (`config.model.init_from`): from a Hugging Face folder ('hf:PATH') and
from a lime_jax workdir[:step]."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

from lime_jax import checkpoint as ckpt_lib
from lime_jax import config as config_lib
from lime_jax.data import subword, tasks
from lime_jax.model import Transformer
from lime_jax.train import init_from
from lime_jax.train import loop as train_lib
from tests.helpers import hf_tiny
from tests.unit.test_init_from import _experiment


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return hf_tiny.make_llama_folder(str(tmp_path_factory.mktemp("hf") / "llama"), seed=1)


def _table1(hf_dir, **train):
  config = _experiment("seqvcr_mult").get_config("gpt2_table1")
  config.model.init_from = f"hf:{hf_dir}"
  config.data.multiplication.update(num_digits=2, eval_file="")
  config.data.seq_len = 32
  config.train.update(
    batch_size=8,
    num_steps=12,
    warmup_steps=0,
    learning_rate=2e-3,
    log_every=1,
    checkpoint_every=12,
    eval_every=0,
    async_checkpoint=False,
    **train,
  )
  config.eval.update(num_examples=8, batch_size=8)
  return config


def test_hf_source_step0_logits_equal_hf_and_loss_decreases(hf_dir, tmp_path):
  import torch
  import transformers

  config = _table1(hf_dir)
  run = train_lib.build(config)
  # the architecture and the tokenizer come from the folder; the pause ids are 3 new embedding rows
  assert (run.model_cfg.num_layers, run.model_cfg.d_model, run.model_cfg.tie_embeddings) == (2, 32, False)
  assert config.data.tokenizer == hf_dir
  tok = tasks.get_task(config.data, 0).tokenizer
  assert isinstance(tok, subword.HFTokenizer) and tok.pause_id == 321 and run.model_cfg.vocab_size == 323
  state = train_lib.create_state(run)
  params, fresh = init_from.initial_params(config, run.model_cfg, state.params)
  assert "['seq_vcr_proj']" in fresh and all("embed" not in f for f in fresh)
  ids = np.array([tok.encode("12 * 34|| 408 and more words to read")], np.int32)
  ours = np.asarray(Transformer(run.model_cfg).apply({"params": params}, ids)[0])
  ref = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    theirs = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours[..., :320], theirs, atol=2e-4, rtol=1e-4)
  embed = np.asarray(params["embed"])
  assert np.allclose(embed[320:], embed[:320].mean(0), atol=1e-6)

  workdir = tmp_path / "ft"
  result = train_lib.train(config, str(workdir))
  assert result.metrics["status"] == "completed"
  losses = [
    json.loads(l)["loss"]
    for l in (workdir / "metrics.jsonl").read_text().splitlines()
    if json.loads(l)["split"] == "train"
  ]
  assert len(losses) >= 10 and np.mean(losses[-3:]) < np.mean(losses[:3])
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["init_from"] == f"hf:{hf_dir}" and saved["data"]["tokenizer"] == hf_dir


def test_clashing_override_names_the_field(hf_dir):
  config = _table1(hf_dir)
  config.model.num_layers = 3
  with pytest.raises(ValueError, match=r"config.model.num_layers=3 but the source has 2"):
    train_lib.build(config)


def _tiny_baseline(**train):
  sys.path.insert(0, hf_tiny.REPO)
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  config.train.update(async_checkpoint=False, **train)
  return config


def test_init_from_a_workdir(tmp_path):
  source = tmp_path / "src"
  train_lib.train(_tiny_baseline(num_steps=4, checkpoint_every=2), str(source))
  _, raw = ckpt_lib.restore_raw_state(str(source), 2)
  config = config_lib.default_config()  # model fields at their defaults: they come from the source
  config.data.task = "arithmetic"
  config.train.update(
    batch_size=8, num_steps=2, warmup_steps=0, log_every=1, checkpoint_every=2, async_checkpoint=False
  )
  config.eval.update(num_examples=8, batch_size=8)
  config.model.init_from = f"{source}:2"
  run = train_lib.build(config)
  assert (run.model_cfg.num_layers, run.model_cfg.d_model, run.model_cfg.num_heads) == (2, 32, 2)
  params, fresh = init_from.initial_params(config, run.model_cfg, train_lib.create_state(run).params)
  assert fresh == []
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(raw["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  result = train_lib.train(config, str(tmp_path / "ft"))
  assert result.metrics["status"] == "completed"
  bad = config_lib.default_config()
  bad.model.update(init_from=str(source), d_model=64, num_heads=2)
  with pytest.raises(ValueError, match="config.model.d_model=64 but the source has 32"):
    train_lib.build(bad)
  missing = config_lib.default_config()
  missing.model.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    train_lib.build(missing)
