"""`python -m lime_jax.evaluate --hf=FOLDER` on a tiny random Llama folder with a locally trained BPE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import _hf_tiny
import numpy as np
import pytest

from lime_jax.probes import common, nl_tasks, pretrained, prompts
from lime_jax.probes.registry import ProbeOptions

SIX = "copying,counting,collapse,oversquash,entropy,separability"
FAST = ["--lengths=2,4", "--num_examples=2", "--collapse_ns=1,2", "--oversquash_length=8"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return _hf_tiny.make_llama_folder(str(tmp_path_factory.mktemp("hf") / "llama"))


def _evaluate(args):
  return subprocess.run(
    [sys.executable, "-m", "lime_jax.evaluate", *args],
    cwd=_hf_tiny.REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_evaluate_hf_runs_every_probe_fp32(hf_dir, tmp_path):
  out = tmp_path / "fp32"
  proc = _evaluate([f"--hf={hf_dir}", f"--out={out}", f"--probes={SIX}", *FAST])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["hf"] == hf_dir and results["compute_dtype"] == "float32" and results["step"] == "hf"
  assert set(results["probes"]) == set(SIX.split(","))
  for name, result in results["probes"].items():
    assert "skipped" not in result["metrics"], name
  counting = results["probes"]["counting"]["metrics"]
  assert counting["prompt_format"] == "natural_language"
  assert 0.0 <= counting["parse_rate_overall"] <= 1.0 and "unparsed" in counting["histogram"]
  n_answers = sum(len(v) for vals in counting["predicted"].values() for v in vals)
  assert sum(counting["histogram"].values()) == n_answers
  copying = results["probes"]["copying"]["metrics"]
  assert set(copying["parse_rate"]) == set(prompts.COPY_STYLES)
  assert copying["samples"]["hint"][0]["prompt"].startswith(
    "What is the last digit of the following sequence? It's not necessarily a 1, check carefully. "
  )
  assert results["probes"]["separability"]["metrics"]["classes"][0].startswith(" ")
  assert (out / "counting_predictions.png").stat().st_size > 1000


def test_evaluate_hf_bf16_in_process(hf_dir, tmp_path):
  opts = ProbeOptions(lengths=(2, 4), num_examples=2)
  out, results = pretrained.evaluate_hf(
    hf_dir, str(tmp_path / "bf16"), ["copying", "counting"], opts, compute_dtype="bfloat16"
  )
  assert results["compute_dtype"] == "bfloat16" and results["model"]["compute_dtype"] == "bfloat16"
  m = results["probes"]["counting"]["metrics"]
  assert "parse_rate" in m and "histogram" in m
  assert (
    json.loads(open(os.path.join(out, "results.json")).read())["probes"]["copying"]["metrics"][
      "prompt_format"
    ]
    == "natural_language"
  )


def test_kv_cache_generation_matches_uncached_greedy(hf_dir):
  config, model_cfg, params, tok = pretrained.load(hf_dir)
  texts = [
    prompts.copying_prompt("direct", [1, 1, 0]),
    prompts.counting_prompt("cot", [1] * 9),
    prompts.counting_prompt("few_shot", [1, 1], [[1, 1, 1]]),
  ]
  cfg = common.probe_model_cfg(model_cfg)
  got = nl_tasks.generate(params, cfg, tok, texts, max_new=7)
  rows = [common.encode_prompt(tok, t, model_cfg.vocab_size) for t in texts]
  want = [tok.decode(o) for o in common.greedy_decode(params, cfg, rows, 7, tok.eos_id, 0)]
  assert got == want
  assert any(len(g) > 0 for g in got)


def test_missing_tokenizer_and_foreign_tokenizer_are_refused(hf_dir, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(hf_dir, bare)
  os.remove(bare / "tokenizer.json")
  proc = _evaluate([f"--hf={bare}", f"--out={tmp_path / 'o'}", "--probes=copying"])
  assert proc.returncode != 0 and "lacks tokenizer.json" in proc.stderr
  proc = _evaluate([f"--hf={hf_dir}", "--probes=copying"])
  assert proc.returncode != 0 and "--hf needs --out" in proc.stderr
  big = tmp_path / "big"
  shutil.copytree(hf_dir, big)
  _hf_tiny.train_bpe(str(big), vocab_size=400)  # more ids than the model's 320 embedding rows
  with pytest.raises(ValueError, match="does not belong to this checkpoint"):
    pretrained.load(str(big))


def test_eval_tokens_of_a_pretrained_context_are_text(hf_dir):
  _, model_cfg, params, tok = pretrained.load(hf_dir)
  ctx = type(
    "Ctx",
    (),
    {"pretrained": hf_dir, "tokenizer": tok, "model_cfg": model_cfg, "options": ProbeOptions(num_examples=3)},
  )()
  ids, mask = common.eval_tokens(ctx, 3)
  assert ids.shape[0] == 3 and mask.sum(axis=1).min() > 10
  first = ids[0][mask[0]]
  start = common.start_ids(tok)  # the tokenizer's own rule: none for this BPE (no post-processor)
  assert start == [] and list(first[: len(start)]) == start
  body = tok.decode(first[len(start) :])
  assert body == prompts.probe_sentences(3)[0][: len(body)]
  assert np.all(ids[~mask] == 0)
