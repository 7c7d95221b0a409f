"""`python -m lime_jax.evaluate --hf ... --chat_template` on a folder without a template fails before
loading the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import hf_tiny

# A template over the tiny BPE's one special token (it closes a turn, so EOS already ends an answer).
TEMPLATE = (
  "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
  "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """(plain folder, the same with a chat template in tokenizer_config.json)."""
  plain = hf_tiny.make_llama_folder(str(tmp_path_factory.mktemp("hf") / "llama"))
  chat = str(tmp_path_factory.mktemp("hf") / "chat")
  shutil.copytree(plain, chat)
  with open(f"{chat}/tokenizer_config.json", "w") as f:
    json.dump({"eos_token": "<|endoftext|>", "chat_template": TEMPLATE}, f)
  return plain, chat


def test_chat_template_flag_without_a_template_fails_before_loading(hf_dirs, tmp_path):
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
