"""A tiny random-init Hugging Face folder (LlamaForCausalLM + a BPE tokenizer trained here), for tests
of `evaluate --hf` and `model.init_from='hf:...'`. No download: the tokenizer is trained on the repo's
README and docs with the `tokenizers` library."""

from __future__ import annotations

import glob
import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def train_bpe(out_dir: str, vocab_size: int = 320) -> int:
  """Writes out_dir/tokenizer.json (byte-level BPE, <|endoftext|> special); returns its vocab size."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  files = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
  tok.train(files, trainer)
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  return tok.get_vocab_size()


def make_llama_folder(
  out_dir: str, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0, vocab_size: int = 320
) -> str:
  """A random LlamaForCausalLM saved with save_pretrained (safetensors) plus its tokenizer.json."""
  import torch
  import transformers

  vocab = train_bpe(out_dir, vocab_size)
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=2 * hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=heads,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
  )
  transformers.LlamaForCausalLM(cfg).save_pretrained(out_dir)
  return out_dir
