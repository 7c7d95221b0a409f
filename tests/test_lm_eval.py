"""Tests of data/target_bytes.py and token_metrics.lm_metrics (bits per byte), evals/multiple_choice.py
(multiple-choice scoring), the `lm` probe and text eval logs."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from lime_jax.config import default_config
from lime_jax.data import target_bytes
from lime_jax.data.tokenizer import ByteTokenizer
from lime_jax.evals import multiple_choice
from lime_jax.losses import token_metrics
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.train import loop as train_lib

TOK = ByteTokenizer()


def test_lm_metrics_and_target_bytes_literal():
  m = token_metrics.lm_metrics(ce_sum=10.0, ce_tokens=5.0, num_bytes=20.0)
  assert m["perplexity"] == pytest.approx(math.exp(2.0))
  assert m["bits_per_byte"] == pytest.approx(10.0 / math.log(2) / 20.0)
  assert m["bytes_per_token"] == pytest.approx(4.0)
  targets = np.array([TOK.encode("héllo") + [TOK.eos_id, TOK.pad_id]], np.int32)  # é: 2 bytes.
  mask = np.ones_like(targets, np.float32)
  assert target_bytes.target_bytes(TOK, targets, mask).tolist() == [6.0]
  # Rows cut inside 'é' and 'ö': the characters count once, in the sum over the consecutive rows.
  stream = np.array(TOK.encode("héllo wörld, ça va") + [TOK.eos_id], np.int32)
  rows = np.stack([stream[i : i + 4] for i in range(0, 20, 4)])
  got = target_bytes.target_bytes(TOK, rows, np.ones_like(rows, np.float32))
  assert got.sum() == len("héllo wörld, ça v".encode()) == 20  # the first 20 bytes.
  assert got.tolist() != [4.0] * 5  # the rows holding the ends of split characters count them.


def test_task_formats_follow_the_harness_definitions():
  doc = multiple_choice.to_doc(
    "hellaswag",
    {
      "activity_label": "Cooking",
      "ctx_a": "A man cuts onions.",
      "ctx_b": "he [title] fries them",
      "endings": ["x  y", "z"],
      "label": "1",
    },
  )
  assert doc.contexts == ("Cooking: A man cuts onions. He. fries them",) * 2
  assert doc.continuations == (" x y", " z") and doc.gold == 1
  arc = multiple_choice.to_doc(
    "arc_easy",
    {"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "C"},
  )
  assert arc.contexts[0] == "Question: Q?\nAnswer:" and arc.gold == 2 and arc.continuations[1] == " b"
  piqa = multiple_choice.to_doc("piqa", {"goal": "g", "sol1": "s1", "sol2": "s2", "label": 0})
  assert piqa.continuations == (" s1", " s2") and piqa.gold == 0
  wino = multiple_choice.to_doc(
    "winogrande",
    {"sentence": "Tom hugged Bob because _ was sad.", "option1": "Tom", "option2": "Bob", "answer": "2"},
  )
  assert wino.contexts == ("Tom hugged Bob because Tom", "Tom hugged Bob because Bob")
  assert wino.continuations == (" was sad.", " was sad.") and wino.gold == 1
  assert multiple_choice.infer_task("/x/arc_challenge-test.jsonl") == "arc_challenge"
  with pytest.raises(ValueError, match=r"lacks \['sol2'"):
    multiple_choice.to_doc("piqa", {"goal": "g", "sol1": "s1", "label": 0})


def _tiny_model(vocab: int = 272):
  cfg = ModelConfig(vocab_size=vocab, num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, ffn_dim=64)
  params = init_params(cfg, jax.random.key(0))
  model = Transformer(cfg)

  def log_probs(tokens_BT):
    return np.asarray(jax.nn.log_softmax(model.apply({"params": params}, tokens_BT)[0], axis=-1))

  return log_probs


def test_loglikelihoods_equal_a_direct_sum_over_the_logits():
  log_probs = _tiny_model()
  reqs = [("The cat", " sat"), ("A", " much longer continuation"), ("x" * 40, " y")]
  got = multiple_choice.loglikelihoods(log_probs, TOK, reqs, max_len=32, batch_size=2)
  for (ctx, cont), g in zip(reqs, got):
    ids = ([TOK.bos_id] + TOK.encode(ctx) + TOK.encode(cont))[-33:]
    n = len(TOK.encode(cont))
    lp = log_probs(np.array([ids[:-1]], np.int32))[0]
    want = sum(lp[p - 1, ids[p]] for p in range(len(ids) - n, len(ids)))
    assert g == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_score_mc_acc_and_acc_norm_and_few_shot(tmp_path):
  # A fake model that prefers the byte 'a' (id 16 + 97): log p = 0 for 'a', -1 for everything else.
  def log_probs(tokens_BT):
    lp = np.full(tokens_BT.shape + (272,), -1.0)
    lp[..., 16 + ord("a")] = 0.0
    return lp

  path = tmp_path / "generic.jsonl"
  recs = [
    {"context": "q1", "choices": ["aaaa", "bb"], "gold": 0},  # ll -0 vs -2; norm 0 vs -1.
    {"context": "q2", "choices": ["bbbb", "b"], "gold": 0},  # ll -4 vs -1: acc wrong; norm -1 vs -1.
    {"context": "q3", "choices": ["ab", "bbb"], "gold": 1},
  ]  # ll -1 vs -3: wrong both ways.
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  docs = multiple_choice.read_docs("generic", str(path))
  res = multiple_choice.score_mc(log_probs, TOK, docs, max_len=64)
  # continuations carry the leading space (one non-'a' byte): ll = -(non-'a' bytes).
  assert res["loglikelihoods"] == [-1.0, -3.0, -5.0, -2.0, -2.0, -4.0]
  assert res["acc"] == pytest.approx(1 / 3)
  # acc_norm: doc 2 ties (-5/5 = -2/2), argmax takes the first (gold): 2 of 3.
  assert res["acc_norm"] == pytest.approx(2 / 3)
  reqs = multiple_choice.requests(docs, num_shots=2, seed=0)
  assert reqs == multiple_choice.requests(docs, num_shots=2, seed=0)  # fixed seed.
  first_ctx = reqs[0][0]
  assert first_ctx.endswith("q1") and "q1" not in first_ctx[:-2]  # shots are other documents.
  assert first_ctx.count(multiple_choice.FEWSHOT_DELIMITER) == 2
  assert "q2 bbbb" in first_ctx and "q3 bbb" in first_ctx
  with pytest.raises(ValueError, match=r"3-shot needs 4 documents"):
    multiple_choice.requests(docs, num_shots=3, seed=0)


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

  (tmp_path / "piqa.jsonl").write_text(
    "".join(
      json.dumps({"goal": f"g{i}", "sol1": "to be", "sol2": "or not", "label": i % 2}) + "\n"
      for i in range(4)
    )
  )
  from lime_jax.probes.registry import ProbeOptions

  _, out = runner.evaluate(
    str(tmp_path / "run"),
    ["lm"],
    ProbeOptions(num_examples=8, mc_tasks=(str(tmp_path / "piqa.jsonl"),), mc_shots=1),
  )
  lm = out["probes"]["lm"]["metrics"]
  assert lm["heldout"]["ce"] == pytest.approx(ev["ce"], rel=2e-6)  # the same forward, the same masks
  assert lm["heldout"]["bits_per_byte"] == pytest.approx(ev["bits_per_byte"], rel=1e-4)
  assert lm["piqa"]["num_docs"] == 4 and lm["piqa"]["num_shots"] == 1 and 0 <= lm["piqa"]["acc"] <= 1
