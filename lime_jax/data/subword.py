"""Subword tokenizers behind the pipeline's `Tokenizer` protocol: HF `tokenizer.json` and SentencePiece.

`load_tokenizer(path, pause_tokens=False)` takes
- a `tokenizer.json` file (the `tokenizers` library: GPT-2's byte-level BPE, LLaMA's, any trained one),
- a folder holding `tokenizer.json` (the Hugging Face layout); `tokenizer_config.json` and
  `special_tokens_map.json` there name the bos / eos / pad / sep tokens when present,
- a SentencePiece `.model` file (needs the `sentencepiece` package: `pip install -e ".[text]"`).

Special ids are the tokenizer's own. Where a role is missing: bos falls back to eos, pad to eos (GPT-2's
`<|endoftext|>` is bos, eos and pad at once), sep to -1 (unusable; only `add_sep=True` needs it). A
tokenizer without any end-of-text token is rejected (documents could not be separated).

Pause tokens: with `pause_tokens=True` three ids are appended after the tokenizer's vocabulary
(pause_start, pause, pause_end = V, V + 1, V + 2; `vocab_size` = V + 3); otherwise they are -1 and a
task that inserts pauses fails on them. `decode` writes them as `<pause_start>`, `<pause>`,
`<pause_end>`.

`encode` adds no special tokens. `decode` drops the run of pad ids at the end (as the char / byte
tokenizers do; with pad = eos that includes trailing eos) and keeps every other special as text.

`model.vocab_size` may exceed `vocab_size` (the embedding rows above it are padding, e.g. GPT-2's 50257
rounded up to a multiple of 128 so that the vocab axis shards); `check_model_vocab` rejects a smaller one.
"""

from __future__ import annotations

import abc
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

PAUSE_NAMES = ("<pause_start>", "<pause>", "<pause_end>")
TOKENIZER_JSON = "tokenizer.json"
_CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # later files win.
_ROLES = ("bos", "eos", "pad", "sep")
# Token strings recognised for a role when no config file names one (first match wins).
_KNOWN = {
  "bos": ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]", "<|startoftext|>"),
  "eos": ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[EOS]"),
  "pad": ("<pad>", "[PAD]", "<|pad|>"),
  "sep": ("<sep>", "[SEP]"),
}


def _token_content(value: Any) -> str | None:
  """A special-token entry of an HF config file: a string or {'content': ...}; None otherwise."""
  if isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _configured_specials(folder: pathlib.Path) -> dict[str, str]:
  """{role: token string} from the HF config files in `folder` (absent files and entries skipped)."""
  out: dict[str, str] = {}
  for name in _CONFIG_FILES:
    path = folder / name
    if not path.is_file():
      continue
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it.") from e
    for role in _ROLES:
      content = _token_content(data.get(f"{role}_token"))
      if content:
        out[role] = content
  return out


def _resolve_specials(named: dict[str, int], path: str) -> dict[str, int]:
  """Fills missing roles (bos, pad <- eos; sep <- -1); raises when there is no eos."""
  if "eos" not in named:
    raise ValueError(
      f"tokenizer {path!r} has no end-of-text token (looked for an eos_token in "
      f"tokenizer_config.json / special_tokens_map.json and for {', '.join(_KNOWN['eos'])}); "
      "train or export it with one, e.g. special_tokens=['<|endoftext|>']."
    )
  eos = named["eos"]
  return {"bos": named.get("bos", eos), "eos": eos, "pad": named.get("pad", eos), "sep": named.get("sep", -1)}


class _SubwordBase(abc.ABC):
  """Special-id bookkeeping shared by both backends; subclasses set `_base_size` and implement
  `_encode` / `_decode_run`."""

  _base_size: int

  def _init_specials(self, specials: dict[str, int], pause_tokens: bool) -> None:
    self.bos_id, self.eos_id = specials["bos"], specials["eos"]
    self.pad_id, self.sep_id = specials["pad"], specials["sep"]
    self.pause_tokens = bool(pause_tokens)
    V = self._base_size
    if pause_tokens:
      self.pause_start_id, self.pause_id, self.pause_end_id = V, V + 1, V + 2
      self.vocab_size = V + 3
    else:
      self.pause_start_id = self.pause_id = self.pause_end_id = -1
      self.vocab_size = V

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return self._encode(text)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids` with the trailing pad run dropped; pause ids as `<pause...>` names."""
    out = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
    while out and out[-1] == self.pad_id:
      out.pop()
    parts: list[str] = []
    run: list[int] = []
    for i in out:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size}).")
      if i >= self._base_size:
        parts.append(self._decode_run(run))
        run = []
        parts.append(PAUSE_NAMES[i - self._base_size])
      else:
        run.append(i)
    parts.append(self._decode_run(run))
    return "".join(parts)

  def token_bytes(self, ids: Sequence[int]) -> int:
    """UTF-8 bytes of the decoded text of `ids` (bits-per-byte denominators)."""
    return len(self.decode(list(ids)).encode("utf-8"))

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """The library's ids of `text`, no specials added."""

  @abc.abstractmethod
  def _decode_run(self, ids: list[int]) -> str:
    """The text of a run of the library's own ids (no pause ids)."""


class HFTokenizer(_SubwordBase):
  """A `tokenizers.Tokenizer` from a `tokenizer.json` file (optionally with HF config files beside it)."""

  def __init__(self, json_path: str, *, pause_tokens: bool = False, source: str | None = None):
    import tokenizers  # pylint: disable=import-outside-toplevel

    self.path = source or json_path
    try:
      self._tok = tokenizers.Tokenizer.from_file(json_path)
    except Exception as e:  # the library raises a bare Exception on malformed files.
      raise ValueError(
        f"cannot read tokenizer {json_path!r} with the tokenizers library "
        f"({type(e).__name__}: {e}); it must be a Hugging Face tokenizer.json."
      ) from e
    self._base_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    vocab = self._tok.get_vocab(with_added_tokens=True)
    named: dict[str, int] = {}
    for role, content in _configured_specials(pathlib.Path(json_path).parent).items():
      if content not in vocab:
        raise ValueError(
          f"the {role}_token {content!r} named next to {json_path!r} is not in its "
          "vocabulary; fix tokenizer_config.json / special_tokens_map.json."
        )
      named[role] = int(vocab[content])
    for role, candidates in _KNOWN.items():
      if role not in named:
        found = next((c for c in candidates if c in vocab), None)
        if found is not None:
          named[role] = int(vocab[found])
    self._init_specials(_resolve_specials(named, self.path), pause_tokens)

  def _encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def _decode_run(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=False) if ids else ""


class SentencePieceTokenizer(_SubwordBase):
  """A SentencePiece `.model` (bos / eos / pad as the model defines them)."""

  def __init__(self, model_path: str, *, pause_tokens: bool = False):
    try:
      import sentencepiece  # pylint: disable=import-outside-toplevel
    except ModuleNotFoundError as e:
      raise ModuleNotFoundError(
        f"reading the SentencePiece model {model_path!r} needs the sentencepiece package: "
        'pip install -e ".[text]" (or pip install sentencepiece).',
        name=e.name,
      ) from e
    self.path = model_path
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    except Exception as e:  # OSError / RuntimeError depending on the failure.
      raise ValueError(f"cannot read SentencePiece model {model_path!r} ({type(e).__name__}: {e}).") from e
    self._base_size = int(self._sp.get_piece_size())
    named = {role: int(getattr(self._sp, f"{role}_id")()) for role in ("bos", "eos", "pad")}
    self._init_specials(
      _resolve_specials({r: i for r, i in named.items() if i >= 0}, model_path), pause_tokens
    )

  def _encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def _decode_run(self, ids: list[int]) -> str:
    return self._sp.decode(ids) if ids else ""


def load_tokenizer(path: str, *, pause_tokens: bool = False) -> HFTokenizer | SentencePieceTokenizer:
  """The tokenizer at `path`: a tokenizer.json, a folder holding one, or a SentencePiece .model."""
  p = pathlib.Path(os.path.expanduser(str(path)))
  if p.is_dir():
    json_path = p / TOKENIZER_JSON
    if not json_path.is_file():
      raise ValueError(
        f"tokenizer folder {str(path)!r} holds no {TOKENIZER_JSON}; point "
        "config.data.tokenizer at a tokenizer.json, a folder with one, or a "
        "SentencePiece .model file."
      )
    return HFTokenizer(str(json_path), pause_tokens=pause_tokens, source=str(path))
  if not p.is_file():
    raise ValueError(
      f"tokenizer {str(path)!r} does not exist; config.data.tokenizer must be a "
      "tokenizer.json, a folder with one, or a SentencePiece .model file."
    )
  if p.suffix == ".model":
    return SentencePieceTokenizer(str(p), pause_tokens=pause_tokens)
  return HFTokenizer(str(p), pause_tokens=pause_tokens)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """`vocab_size` rounded up to a multiple of `multiple` (for `model.vocab_size` when sharding)."""
  return -(-int(vocab_size) // multiple) * multiple


def check_model_vocab(model_vocab_size: int, tokenizer_vocab_size: int, tokenizer_name: str) -> int:
  """The model's vocabulary size: `model_vocab_size` (0 = the tokenizer's); raises when it is smaller
  than the tokenizer's (ids >= it would index past the embedding table)."""
  if model_vocab_size == 0:
    return int(tokenizer_vocab_size)
  if model_vocab_size < tokenizer_vocab_size:
    raise ValueError(
      f"config.model.vocab_size={model_vocab_size} is smaller than the vocabulary of the "
      f"tokenizer config.data.tokenizer={tokenizer_name!r} ({tokenizer_vocab_size} ids): set "
      f"model.vocab_size to 0 (use the tokenizer's), to {tokenizer_vocab_size}, or a larger value "
      f"padded for sharding (e.g. {padded_vocab_size(tokenizer_vocab_size)})."
    )
  return int(model_vocab_size)
