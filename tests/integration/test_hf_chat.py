"""`evaluate_hf` with the chat template and the end-of-turn stop of answers, on a tiny random Llama folder."""

from __future__ import annotations

import json
import shutil

import pytest

from lime_jax.probes import common, nl_tasks, pretrained, prompts
from lime_jax.probes.registry import ProbeOptions
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


def test_answers_stop_at_the_end_of_turn_token(hf_dirs):
  _, model_cfg, params, tok = pretrained.load(hf_dirs[0])
  cfg = common.probe_model_cfg(model_cfg)
  texts = [prompts.counting_prompt("direct", [1, 1, 1]), prompts.copying_prompt("direct", [1, 1, 0])]
  rows = [common.encode_prompt(tok, t, model_cfg.vocab_size) for t in texts]
  new = common.greedy_decode(params, cfg, rows, 5, tok.eos_id, 0)
  assert tok.stop_ids == (tok.eos_id,) and nl_tasks.generate(params, cfg, tok, texts, 5) == [
    tok.decode(n) for n in new
  ]
  turn = new[0][2]  # pretend the third answer token of the first prompt closes a turn
  tok.stop_ids = (tok.eos_id, turn)
  got = nl_tasks.generate(params, cfg, tok, texts, 5)
  assert got[0] == tok.decode(new[0][: new[0].index(turn)])
  assert got[1] == tok.decode(new[1][: new[1].index(turn)] if turn in new[1] else new[1])


def test_evaluate_hf_with_the_chat_template(hf_dirs, tmp_path):
  opts = ProbeOptions(lengths=(2,), num_examples=1, chat_template=True)
  _, results = pretrained.evaluate_hf(hf_dirs[1], str(tmp_path / "chat"), ["counting"], opts)
  assert results["options"]["chat_template"] is True
  m = results["probes"]["counting"]["metrics"]
  assert m["chat_template"] is True and "median_abs_error" in m
  sample = m["samples"]["direct"][0]
  assert sample["rendered_prompt"] == (
    f"<|endoftext|>user\n{sample['prompt']}<|endoftext|>\n<|endoftext|>assistant\n"
  )
  assert dict(results["probes"]["counting"]["summary"])["counting prompts"].startswith("chat template")
  summary = (tmp_path / "chat" / "summary.md").read_text()
  assert "| counting prompts | chat template (--chat_template) |" in summary
