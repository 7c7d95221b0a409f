"""`python -m lime_jax.evaluate --hf=FOLDER` on a tiny random Llama folder with a locally trained BPE:
every probe in fp32, and the refusal of a missing or foreign tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lime_jax.probes import pretrained, prompts
from tests.helpers import hf_tiny

SIX = "copying,counting,collapse,oversquash,entropy,separability"
FAST = ["--lengths=2,4", "--num_examples=2", "--collapse_ns=1,2", "--oversquash_length=8"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return hf_tiny.make_llama_folder(str(tmp_path_factory.mktemp("hf") / "llama"))


def _evaluate(args):
  return subprocess.run(
    [sys.executable, "-m", "lime_jax.evaluate", *args],
    cwd=hf_tiny.REPO,
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
  hf_tiny.train_bpe(str(big), vocab_size=400)  # more ids than the model's 320 embedding rows
  with pytest.raises(ValueError, match="does not belong to this checkpoint"):
    pretrained.load(str(big))
