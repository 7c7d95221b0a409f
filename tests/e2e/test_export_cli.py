"""`python -m lime_jax.tools.export` on a run trained by `python -m lime_jax.main`: transformers loads the
folder it writes to the logits lime_jax gives."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.integration.test_hf_families import _forward, _hf_logits, _max_diff

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------ export CLI
def test_export_cli_writes_a_folder_transformers_loads(tmp_path):
  """`python -m lime_jax.tools.export --workdir=RUN --out=DIR` on a trained run: transformers loads DIR to the
  logits lime_jax gives with the checkpoint's parameters."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from lime_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from lime_jax.probes import runner  # pylint: disable=g-import-not-at-top

  repo = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", *args], cwd=repo, capture_output=True, text=True, timeout=400
  )
  workdir, out = tmp_path / "run", tmp_path / "hf"
  proc = run(
    "lime_jax.main",
    "--config=experiments/baseline.py:tiny",
    f"--workdir={workdir}",
    "--config.train.num_steps=2",
    "--config.train.checkpoint_every=2",
    "--config.data.seq_len=32",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run("lime_jax.tools.export", f"--workdir={workdir}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "llama" in proc.stdout
  restored = checkpoint.restore_params(str(workdir))
  cfg, params = restored.model_cfg, restored.params
  assert cfg == runner.model_config_for(runner.config_from_dict(restored.config))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
  tokens_BT = np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
  assert _max_diff(_hf_logits(model, tokens_BT), _forward(cfg, params, tokens_BT)) <= 1e-4
  from lime_jax.tools import export  # pylint: disable=g-import-not-at-top

  with pytest.raises(FileNotFoundError):
    export.export(str(tmp_path / "nothing"), str(tmp_path / "hf2"))
