"""The tokenizer a GGUF file describes (`tokenizer.ggml.*` metadata), built with the `tokenizers` library.

Two vocabulary kinds (`tokenizer.ggml.model`):
- 'gpt2': byte-level BPE (SmolLM2, Llama 3, Qwen 2): the file's tokens (already in the byte-level
  alphabet) and merges; the pre-tokenizer is the one named by `tokenizer.ggml.pre` (`PRE_TOKENIZERS`:
  the splitting rule of each model family, as llama.cpp applies it); unknown names are refused.
- 'llama': SentencePiece-style BPE (Gemma, Llama 2): the tokens with byte fallback (`<0xNN>` tokens);
  the file stores no merges, so they are rebuilt from the vocabulary: every split of a token into two
  tokens is a merge, ranked by the merged token's score (`tokenizer.ggml.scores`), or, for Gemma, by its
  position in the vocabulary (Gemma's scores do not follow its merge order; its file order does).
  Spaces become '▁'; `add_space_prefix` puts one in front of text that does not start with a space
  (transformers' rule; SentencePiece itself adds it to every text); Gemma files spell their runs-of-spaces
  tokens with real spaces, which are respelled as '▁' runs.

Token types (`tokenizer.ggml.token_type`): control tokens (3) are special added tokens, matched whole
and skippable when decoding; user-defined tokens (4) are added tokens matched whole. Special ids come
from `tokenizer.ggml.{bos,eos,padding,unknown}_token_id`; `tokenizer.ggml.add_bos_token` (default: on
for 'llama' vocabularies, as llama.cpp) and `add_eos_token` become the post-processor, so
`encode(text, add_special_tokens=True)` adds what the model's own tokenizer adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lime_jax.gguf.reader import GGUFCheckpoint

_CONTROL, _USER_DEFINED = 3, 4
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
  r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
  r"|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> (regex splits applied in order, each piece split again by the next).
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
  "default": (_GPT2_SPLIT,),
  "gpt2": (_GPT2_SPLIT,),
  "smollm": (r"\p{N}", _GPT2_SPLIT),  # every digit alone, then GPT-2's rule
  "llama-bpe": (_LLAMA3_SPLIT,),
  "llama3": (_LLAMA3_SPLIT,),
  "qwen2": (_QWEN2_SPLIT,),
}
# Vocabularies whose BPE looks a whole pre-token up before merging (llama.cpp's ignore_merges).
_IGNORE_MERGES = ("llama-bpe", "llama3")
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


def tokenizer_metadata(ckpt: GGUFCheckpoint) -> dict[str, Any]:
  """Special ids, BOS / EOS rules and the chat template the file states."""
  kind = ckpt.get("tokenizer.ggml.model")
  ids = {
    role: ckpt.get(f"tokenizer.ggml.{key}_token_id")
    for role, key in (
      ("bos", "bos"),
      ("eos", "eos"),
      ("pad", "padding"),
      ("unk", "unknown"),
      ("sep", "seperator"),
    )
  }
  return {
    "model": kind,
    "pre": ckpt.get("tokenizer.ggml.pre"),
    "ids": {role: int(i) for role, i in ids.items() if i is not None},
    "add_bos": bool(ckpt.get("tokenizer.ggml.add_bos_token", kind == "llama")),
    "add_eos": bool(ckpt.get("tokenizer.ggml.add_eos_token", False)),
    "add_space_prefix": bool(ckpt.get("tokenizer.ggml.add_space_prefix", kind == "llama")),
    "chat_template": ckpt.get("tokenizer.chat_template"),
  }


def build_tokenizer(ckpt: GGUFCheckpoint) -> Any:
  """A `tokenizers.Tokenizer` equal to the file's tokenizer (ids, special tokens, BOS / EOS rules)."""
  meta = tokenizer_metadata(ckpt)
  tokens = ckpt.strings("tokenizer.ggml.tokens")
  if not tokens:
    raise ValueError(f"{ckpt.path}: the GGUF metadata has no tokenizer.ggml.tokens.")
  types = ckpt.array("tokenizer.ggml.token_type")
  types = np.ones(len(tokens), np.int32) if types is None else types.astype(np.int32)
  if meta["model"] == "gpt2":
    tok = _byte_level(ckpt, tokens, meta)
  elif meta["model"] == "llama":
    if ckpt.architecture in _GEMMA_ARCHS:  # runs of spaces are stored as real spaces
      tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
    tok = _sentencepiece(ckpt, tokens, meta)
  else:
    raise ValueError(
      f"{ckpt.path}: tokenizer.ggml.model={meta['model']!r} is not read; lime_jax builds 'gpt2' "
      "(byte-level BPE) and 'llama' (SentencePiece BPE) vocabularies."
    )
  _add_typed_tokens(tok, tokens, types)
  _set_post_processor(tok, tokens, meta)
  return tok


def _byte_level(ckpt: GGUFCheckpoint, tokens: list[str], meta: dict[str, Any]) -> Any:
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top

  pre = meta["pre"] or "default"
  if pre not in PRE_TOKENIZERS:
    raise ValueError(
      f"{ckpt.path}: tokenizer.ggml.pre={pre!r} names a pre-tokenizer lime_jax does not know "
      f"({', '.join(PRE_TOKENIZERS)}); its splitting rule decides the ids, so it is not guessed."
    )
  merges = [tuple(m.split(" ", 1)) for m in (ckpt.strings("tokenizer.ggml.merges") or [])]
  vocab = {t: i for i, t in enumerate(tokens)}
  model = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _IGNORE_MERGES)
  tok = Tokenizer(model)
  splits = [pre_tokenizers.Split(Regex(rule), behavior="isolated") for rule in PRE_TOKENIZERS[pre]]
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  )
  tok.decoder = decoders.ByteLevel()
  return tok


def _sentencepiece(ckpt: GGUFCheckpoint, tokens: list[str], meta: dict[str, Any]) -> Any:
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top

  gemma = ckpt.architecture in _GEMMA_ARCHS
  vocab = {t: i for i, t in enumerate(tokens)}
  scores = ckpt.array("tokenizer.ggml.scores")
  if gemma or scores is None:
    rank_of = {t: float(i) for i, t in enumerate(tokens)}
  else:
    rank_of = {t: -float(s) for t, s in zip(tokens, scores)}
  unk = tokens[meta["ids"]["unk"]] if "unk" in meta["ids"] else None
  model = models.BPE(
    vocab=vocab, merges=_merges_from_vocab(vocab, rank_of), unk_token=unk, fuse_unk=True, byte_fallback=True
  )
  tok = Tokenizer(model)
  if meta["add_space_prefix"]:  # '▁' in front unless the text starts with a space (transformers' rule)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
  else:
    tok.normalizer = normalizers.Replace(" ", "\u2581")
  decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  if meta["add_space_prefix"]:
    decode.append(decoders.Strip(" ", 1, 0))
  tok.decoder = decoders.Sequence(decode)
  return tok


def _merges_from_vocab(vocab: dict[str, int], rank_of: dict[str, float]) -> list[tuple[str, str]]:
  """Every (left, right) pair of vocabulary tokens whose concatenation is a token, best merged token
  first (lowest rank), ties by the pieces' ids."""
  ranked = []
  for token, token_id in vocab.items():
    for cut in range(1, len(token)):
      left, right = token[:cut], token[cut:]
      if left in vocab and right in vocab:
        ranked.append((rank_of[token], token_id, vocab[left], vocab[right], left, right))
  ranked.sort()
  return [(left, right) for *_, left, right in ranked]


def _add_typed_tokens(tok: Any, tokens: list[str], types: np.ndarray) -> None:
  from tokenizers import AddedToken  # pylint: disable=g-import-not-at-top

  control = [tokens[i] for i in np.flatnonzero(types == _CONTROL)]
  user = [tokens[i] for i in np.flatnonzero(types == _USER_DEFINED)]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _set_post_processor(tok: Any, tokens: list[str], meta: dict[str, Any]) -> None:
  from tokenizers import processors  # pylint: disable=g-import-not-at-top

  ids = meta["ids"]
  first = [("bos", ids["bos"])] if meta["add_bos"] and "bos" in ids else []
  last = [("eos", ids["eos"])] if meta["add_eos"] and "eos" in ids else []
  if not first and not last:
    return
  single = " ".join([tokens[i] for _, i in first] + ["$A"] + [tokens[i] for _, i in last])
  pair = " ".join([single] + [tokens[i] for _, i in first] + ["$B:1"] + [tokens[i] for _, i in last])
  tok.post_processor = processors.TemplateProcessing(
    single=single, pair=pair, special_tokens=list(dict.fromkeys((tokens[i], i) for _, i in first + last))
  )


def save_hf_tokenizer(path: str, out_dir: str) -> None:
  """Writes the GGUF file's tokenizer as an HF folder's tokenizer.json + tokenizer_config.json (special
  tokens, add_bos_token, chat_template), which transformers and `subword.load_tokenizer` read."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  ckpt = GGUFCheckpoint.open(path)
  meta = tokenizer_metadata(ckpt)
  tok = build_tokenizer(ckpt)
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  config: dict[str, Any] = {
    f"{role}_token": tok.id_to_token(i)
    for role, i in meta["ids"].items()
    if role in ("bos", "eos", "pad", "unk")
  }
  config.update(
    add_bos_token=meta["add_bos"], add_eos_token=meta["add_eos"], tokenizer_class="PreTrainedTokenizerFast"
  )
  if meta["chat_template"]:
    config["chat_template"] = meta["chat_template"]
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
