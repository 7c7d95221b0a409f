"""Text training logs perplexity and bits per byte, and the `lm` probe reads them back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lime_jax.config import default_config
from lime_jax.train import loop as train_lib


def _text_config(tmp_path):
  val = tmp_path / "val-0.jsonl"
  train = tmp_path / "train-0.jsonl"
  words = "to be or not to be that is the question whether tis nobler".split()
  rng = np.random.default_rng(0)
  for path, n in ((train, 60), (val, 20)):
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 9))}) + "\n" for _ in range(n)))
  c = default_config()
  c.data.task, c.data.seq_len, c.data.loss_scope = "text", 32, "all"
  c.data.text.update(source="files", files=str(train), eval_files=str(val))
  c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.train.update(batch_size=4, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=4, eval_every=0)
  c.eval.update(num_examples=8, batch_size=4, greedy=False)
  return c


@pytest.mark.parametrize("document_mask", [False, True])
def test_text_training_logs_perplexity_and_bits_per_byte(tmp_path, document_mask):
  """With model.document_mask the probe must feed the same per-document positions as training's eval."""
  c = _text_config(tmp_path)
  c.model.document_mask = document_mask
  c.train.learning_rate = 1e-2  # enough training that attention across documents changes the CE
  result = train_lib.train(c, str(tmp_path / "run"))
  ev = result.metrics["eval"]
  assert ev["perplexity"] == pytest.approx(math.exp(ev["ce"]), rel=1e-5)
  # byte tokenizer, text without specials: every target is one byte except EOS, which is 0 bytes.
  assert 0.85 < ev["bytes_per_token"] <= 1.0
  assert ev["bits_per_byte"] == pytest.approx(ev["ce"] / math.log(2) / ev["bytes_per_token"], rel=1e-5)

  from lime_jax.probes import runner  # the `lm` probe on the same checkpoint.
  from lime_jax.probes.registry import ProbeOptions

  _, out = runner.evaluate(str(tmp_path / "run"), ["lm"], ProbeOptions(num_examples=8))
  lm = out["probes"]["lm"]["metrics"]
  assert lm["heldout"]["ce"] == pytest.approx(ev["ce"], rel=2e-6)  # the same forward, the same masks
  assert lm["heldout"]["bits_per_byte"] == pytest.approx(ev["bits_per_byte"], rel=1e-4)
