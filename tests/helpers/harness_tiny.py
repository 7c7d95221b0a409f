"""A tiny random Hugging Face Llama whose tokenizer adds BOS or not, and local lm-evaluation-harness task
YAMLs over small jsonl files (tests of lime_jax/evals/lm_harness.py and `python -m lime_jax.harness`)."""

from __future__ import annotations

import json
import os

import numpy as np

from tests.helpers import hf_tiny

WORDS = "the cat sat on a mat while two dogs ran past the old red barn and one bird sang".split()


def make_folder(out_dir: str, bos: bool) -> str:
  """A random LlamaForCausalLM (2 layers, d 32, GQA 4/2) with a byte-level BPE tokenizer.json and its
  tokenizer_config.json; `bos`: the tokenizer puts `<s>` before every text (Llama), else nothing."""
  import tokenizers
  import torch
  import transformers
  from tokenizers import processors

  hf_tiny.train_bpe(out_dir, 320)
  path = os.path.join(out_dir, "tokenizer.json")
  tok = tokenizers.Tokenizer.from_file(path)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
  bos_id = None
  if bos:
    tok.add_special_tokens(["<s>"])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tok.save(path)
    config["bos_token"] = "<s>"
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  torch.manual_seed(0)
  model_cfg = transformers.LlamaConfig(
    vocab_size=tok.get_vocab_size(),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=bos_id,
    eos_token_id=0,
    initializer_range=0.3,  # peaked predictions: no near-ties between the choices or in greedy decoding
  )
  transformers.LlamaForCausalLM(model_cfg).save_pretrained(out_dir)
  return out_dir


def write_tasks(folder) -> str:
  """Three task YAMLs over jsonl files in `folder`: tiny_mc (4 choices, acc / acc_norm; some questions
  end in a space), tiny_ppl (loglikelihood_rolling) and tiny_gen (generate_until up to an 'e' or 12
  tokens, exact_match)."""
  rng = np.random.default_rng(0)
  sentence = lambda n: " ".join(rng.choice(WORDS, n))
  mc = [
    {
      "question": sentence(4) + ("? " if i % 3 == 0 else "?"),
      "choices": [sentence(1 + (i + k) % 3) for k in range(4)],
      "gold": i % 4,
    }
    for i in range(8)
  ]
  docs = [{"text": sentence(20 + 7 * i)} for i in range(3)]
  gen = [{"prompt": sentence(5) + ":", "answer": sentence(2)} for _ in range(6)]
  cache = str(folder / "datasets_cache")
  specs = {
    "tiny_mc": (
      mc,
      "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
      "doc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    ),
    "tiny_ppl": (
      docs,
      "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
      "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
    ),
    "tiny_gen": (
      gen,
      "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
      "generation_kwargs:\n  until: ['e']\n  max_gen_toks: 12\n  do_sample: false\n"
      "metric_list:\n  - metric: exact_match\n",
    ),
  }
  tasks = folder / "tasks"
  tasks.mkdir()
  for name, (records, body) in specs.items():
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tasks / f"{name}.yaml").write_text(
      f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
      f"  cache_dir: {cache}\ntest_split: test\n{body}"
    )
  return str(tasks)
