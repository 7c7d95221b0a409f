"""`python -m lime_jax.main` end to end: a tiny config trains and writes every artefact the README lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def test_main_end_to_end(tmp_path):
  """`python -m lime_jax.main` trains a tiny config and writes every artefact the README lists."""
  workdir = tmp_path / "run"
  cmd = [
    sys.executable,
    "-m",
    "lime_jax.main",
    "--config=experiments/baseline.py:tiny",
    f"--workdir={workdir}",
    "--config.train.num_steps=4",
    "--config.model.num_layers=3",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "FLOPs/step" in proc.stdout and "Memory:" in proc.stdout and "Held-out" in proc.stdout
  for name in ("config.json", "metrics.jsonl", "compile_report.json", "final_metrics.json"):
    assert (workdir / name).exists(), name
  assert any((workdir / "tensorboard").iterdir())
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_layers"] == 3  # the override reached the run
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu_pct"} <= set(train_records[-1])
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [3, 4]
