"""`python -m lime_jax.evaluate --hf ... --chat_template` on a folder without a template fails before
loading the model."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import hf_tiny

# The folders of the in-process chat tests (a plain one, and one with a chat template).
from tests.integration.test_hf_chat import hf_dirs  # noqa: F401  (a fixture)


def test_chat_template_flag_without_a_template_fails_before_loading(hf_dirs, tmp_path):  # noqa: F811
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.evaluate",
      f"--hf={hf_dirs[0]}",
      f"--out={tmp_path / 'o'}",
      "--probes=counting",
      "--chat_template",
    ],
    cwd=hf_tiny.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "--chat_template: the tokenizer" in proc.stderr
  assert "has no chat template" in proc.stderr and not (tmp_path / "o").exists()
