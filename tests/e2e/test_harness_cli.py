"""`python -m lime_jax.harness` end to end: a tiny random Llama folder on local task YAMLs (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from tests.helpers import hf_tiny  # noqa: E402
from tests.helpers.harness_tiny import make_folder, write_tasks  # noqa: E402


def _harness(args: list[str], tmp_path) -> subprocess.CompletedProcess:
  env = {
    **os.environ,
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"),
  }
  return subprocess.run(
    [sys.executable, "-m", "lime_jax.harness", *args],
    cwd=hf_tiny.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_harness_cli_runs_local_tasks_and_writes_results(tmp_path):
  model = make_folder(str(tmp_path / "model"), bos=False)
  tasks = write_tasks(tmp_path)
  out = tmp_path / "out"
  proc = _harness(
    [
      f"--model={model}",
      "--tasks=tiny_mc,tiny_ppl,tiny_gen",
      f"--include_path={tasks}",
      "--nodefault_tasks",
      "--batch_size=4",
      "--max_length=64",
      "--limit=4",
      "--log_samples",
      "--bootstrap_iters=0",
      f"--output_path={out}",
    ],
    tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (
    "|tiny_mc" in proc.stdout and "acc_norm" in proc.stdout and f"Wrote {out}/results.json" in proc.stdout
  )
  results = json.loads((out / "results.json").read_text())
  assert set(results["results"]) == {"tiny_mc", "tiny_ppl", "tiny_gen"}
  assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
  assert results["results"]["tiny_ppl"]["word_perplexity,none"] > 1
  assert "exact_match,none" in results["results"]["tiny_gen"]
  samples = (out / "samples_tiny_mc.jsonl").read_text().splitlines()
  assert len(samples) == 4 and len(json.loads(samples[0])["resps"]) == 4  # 4 documents, 4 choices each


def test_harness_cli_names_an_unknown_task(tmp_path):
  tasks = write_tasks(tmp_path)
  model = make_folder(str(tmp_path / "model"), bos=False)
  proc = _harness(
    [f"--model={model}", "--tasks=nope", f"--include_path={tasks}", "--nodefault_tasks"], tmp_path
  )
  assert proc.returncode != 0
  assert "unknown task(s) ['nope']" in proc.stderr and "--include_path" in proc.stderr


def test_evaluate_refuses_the_retired_multiple_choice_flags(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "lime_jax.evaluate", f"--workdir={tmp_path}", "--probes=lm", "--mc_tasks=x.jsonl"],
    cwd=hf_tiny.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert "--mc_tasks: the lm probe's multiple-choice tasks were retired" in proc.stderr
  assert "python -m lime_jax.harness" in proc.stderr
