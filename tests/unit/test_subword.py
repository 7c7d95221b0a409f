"""Tests of `lime_jax/data/subword.py` against the `tokenizers` / `sentencepiece` libraries directly."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lime_jax.data import subword

_WORDS = (
  "the quick brown fox jumps over lazy dogs while seven wizards quietly judge boxing "
  "matches in zürich and a café"
).split()
_TEXT = "the lazy café wizards judge zürich, quietly!"


def _lines(n: int = 300) -> list[str]:
  rng = random.Random(0)
  return [" ".join(rng.choice(_WORDS) for _ in range(10)) for _ in range(n)]


def _train_bpe(specials: list[str]) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(_lines(), trainer)
  return tok


def test_hf_json_matches_the_tokenizers_library(tmp_path):
  ref = _train_bpe(["<|endoftext|>"])
  ref.save(str(tmp_path / "tokenizer.json"))
  tok = subword.load_tokenizer(str(tmp_path / "tokenizer.json"))
  want = ref.encode(_TEXT, add_special_tokens=False).ids
  assert tok.encode(_TEXT) == want and len(want) > 5
  assert tok.decode(want) == ref.decode(want) == _TEXT
  eot = ref.token_to_id("<|endoftext|>")
  # GPT-2 style: one end-of-text token serves as bos, eos and pad; trailing pads are dropped.
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sep_id) == (eot, eot, eot, -1)
  assert tok.decode(want + [eot, eot]) == _TEXT
  assert tok.decode([eot] + want) == "<|endoftext|>" + _TEXT
  assert tok.vocab_size == ref.get_vocab_size() == 300
  assert (tok.pause_start_id, tok.pause_id, tok.pause_end_id) == (-1, -1, -1)
  with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 300\)"):
    tok.decode([300])


def test_hf_folder_reads_config_specials_and_appends_pauses(tmp_path):
  ref = _train_bpe(["<s>", "</s>", "<pad>", "<unk>"])
  ref.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(
    json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": "<pad>"})
  )
  tok = subword.load_tokenizer(str(tmp_path), pause_tokens=True)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(ref.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
  assert (tok.pause_start_id, tok.pause_id, tok.pause_end_id) == (300, 301, 302)
  assert tok.vocab_size == 303
  ids = tok.encode("the fox")
  assert tok.decode(ids + [300, 301, 302] + ids + [tok.pad_id] * 3) == (
    "the fox<pause_start><pause><pause_end>the fox"
  )
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|missing|>"}))
  with pytest.raises(ValueError, match=r"eos_token '<\|missing\|>'.*not in its vocabulary"):
    subword.load_tokenizer(str(tmp_path))


def test_errors_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"config\.data\.tokenizer"):
    subword.load_tokenizer(str(tmp_path / "nope.json"))
  with pytest.raises(ValueError, match=r"holds no tokenizer\.json"):
    subword.load_tokenizer(str(tmp_path))
  _train_bpe([]).save(str(tmp_path / "plain.json"))
  with pytest.raises(ValueError, match=r"no end-of-text token"):
    subword.load_tokenizer(str(tmp_path / "plain.json"))
  with pytest.raises(ValueError, match=r"model\.vocab_size=100.*data\.tokenizer.*300 ids.*384"):
    subword.check_model_vocab(100, 300, "x.json")
  assert subword.check_model_vocab(0, 300, "x") == 300
  assert subword.check_model_vocab(384, 300, "x") == 384


def test_sentencepiece_matches_the_library(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(_lines()), model_writer=buf, vocab_size=40, pad_id=3, minloglevel=2
  )
  (tmp_path / "sp.model").write_bytes(buf.getvalue())
  ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
  tok = subword.load_tokenizer(str(tmp_path / "sp.model"), pause_tokens=True)
  text = "the lazy fox judges boxing"
  assert tok.encode(text) == ref.encode(text, out_type=int)
  assert tok.decode(np.array(tok.encode(text) + [3, 3])) == ref.decode(ref.encode(text)) == text
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_id(), ref.eos_id(), 3)
  assert tok.vocab_size == 43 and tok.pause_id == 41
