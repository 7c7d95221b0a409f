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

`encode` adds no special tokens. `encode_with_specials` adds what the model's own tokenizer adds around
a text (transformers' `tokenizer(text).input_ids`), `add_bos` says whether that includes a BOS. The rule:
tokenizer_config.json's `add_bos_token` / `add_eos_token` when present (transformers 4's rule for the
Llama / Gemma tokenizer classes, which rebuild the post-processor from them), else what tokenizer.json's
post-processor adds (`post_processor_specials`); SmolLM2 and GPT-2 add none, Llama and Gemma add BOS;
`HFTokenizer.from_tokenizer` takes it as `add_bos`. A SentencePiece model adds BOS. `decode` drops the
run of pad ids at the end (as the char / byte tokenizers do; with pad = eos that includes trailing eos)
and keeps every other special as text.

Chat templates (`chat_template.py`): `chat_template` is the folder's `chat_template.jinja`, else
tokenizer_config.json's `chat_template` (None without one); `apply_chat_template(messages)` renders it.
`stop_ids` end a generated answer: EOS, plus the special token the template closes an assistant message
with (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`).

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

from lime_jax.data import chat_template as chat_lib

PAUSE_NAMES = ("<pause_start>", "<pause>", "<pause_end>")
TOKENIZER_JSON = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
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


def _read_json(path: pathlib.Path) -> dict:
  """The JSON object in `path` ({} when the file is absent)."""
  if not path.is_file():
    return {}
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it.") from e
  return data if isinstance(data, dict) else {}


def _configured_specials(folder: pathlib.Path) -> dict[str, str]:
  """{role: token string} from the HF config files in `folder` (absent files and entries skipped)."""
  out: dict[str, str] = {}
  for name in _CONFIG_FILES:
    data = _read_json(folder / name)
    for role in _ROLES:
      content = _token_content(data.get(f"{role}_token"))
      if content:
        out[role] = content
  return out


def _config_flag(config: dict, key: str, path: str) -> bool | None:
  """tokenizer_config.json's boolean `key` (add_bos_token / add_eos_token), None when absent."""
  value = config.get(key)
  if value is None or isinstance(value, bool):
    return value
  raise ValueError(f"{key}={value!r} in the tokenizer_config.json beside {path!r} must be true or false.")


def _folder_chat_template(folder: pathlib.Path, config: dict) -> str | None:
  """The chat template of an HF folder: `chat_template.jinja`, else tokenizer_config.json's
  `chat_template` (a string, or a list / dict of named templates: the one named 'default')."""
  jinja = folder / CHAT_TEMPLATE_FILE
  if jinja.is_file():
    return jinja.read_text(encoding="utf-8")
  template = config.get("chat_template")
  if isinstance(template, list):
    template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
  if isinstance(template, dict):
    template = template.get("default")
  return template if isinstance(template, str) and template.strip() else None


def post_processor_specials(tok: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ids put before a text, ids put after it) by the post-processor of a `tokenizers.Tokenizer`, i.e.
  what `tok.encode(text, add_special_tokens=True)` adds (read off the encoding of a short text)."""
  for probe in ("1", "a", "hello", " "):
    enc = tok.encode(probe, add_special_tokens=True)
    seq = list(enc.sequence_ids)
    if 0 in seq:
      first, last = seq.index(0), len(seq) - seq[::-1].index(0)
      return tuple(enc.ids[:first]), tuple(enc.ids[last:])
  return (), ()


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

  # What the tokenizer puts around a text (`encode_with_specials`); subclasses set them.
  _prefix: tuple[int, ...] = ()
  _suffix: tuple[int, ...] = ()
  add_bos: bool = False  # whether the tokenizer puts BOS before a text (transformers' tokenizer(text))
  chat_template: str | None = None
  stop_ids: tuple[int, ...] = ()  # tokens that end a generated answer: EOS, the template's end of turn

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
    """Token ids of `text`, no special tokens added (special-token text in it, e.g. `<|im_start|>`, is
    still read as that token)."""
    return self._encode(text)

  def encode_with_specials(self, text: str) -> list[int]:
    """Token ids of `text` with the specials the tokenizer adds around a text (its BOS where it adds
    one): what transformers' `tokenizer(text).input_ids` gives."""
    return [*self._prefix, *self._encode(text), *self._suffix]

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

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """The library's ids of `text`, no specials added."""

  @abc.abstractmethod
  def _decode_run(self, ids: list[int]) -> str:
    """The text of a run of the library's own ids (no pause ids)."""


class HFTokenizer(_SubwordBase):
  """A `tokenizers.Tokenizer`: from a `tokenizer.json` file (with the HF config files and
  `chat_template.jinja` beside it), or built in memory (`from_tokenizer`, e.g. from a GGUF file)."""

  def __init__(self, json_path: str, *, pause_tokens: bool = False, source: str | None = None):
    import tokenizers  # pylint: disable=import-outside-toplevel

    try:
      tok = tokenizers.Tokenizer.from_file(json_path)
    except Exception as e:  # the library raises a bare Exception on malformed files.
      raise ValueError(
        f"cannot read tokenizer {json_path!r} with the tokenizers library "
        f"({type(e).__name__}: {e}); it must be a Hugging Face tokenizer.json."
      ) from e
    folder = pathlib.Path(json_path).parent
    vocab = tok.get_vocab(with_added_tokens=True)
    named: dict[str, int] = {}
    for role, content in _configured_specials(folder).items():
      if content not in vocab:
        raise ValueError(
          f"the {role}_token {content!r} named next to {json_path!r} is not in its "
          "vocabulary; fix tokenizer_config.json / special_tokens_map.json."
        )
      named[role] = int(vocab[content])
    config = _read_json(folder / "tokenizer_config.json")
    prefix, _ = post_processor_specials(tok)
    if "bos" not in named and len(prefix) == 1:
      named["bos"] = prefix[0]  # the one token the post-processor puts first is the tokenizer's BOS
    for role, candidates in _KNOWN.items():
      if role not in named:
        found = next((c for c in candidates if c in vocab), None)
        if found is not None:
          named[role] = int(vocab[found])
    self._setup(
      tok,
      named,
      add_bos=_config_flag(config, "add_bos_token", json_path),
      add_eos=_config_flag(config, "add_eos_token", json_path),
      chat_template=_folder_chat_template(folder, config),
      source=source or json_path,
      pause_tokens=pause_tokens,
    )

  @classmethod
  def from_tokenizer(
    cls,
    tok: Any,
    *,
    specials: dict[str, int],
    add_bos: bool,
    chat_template: str | None,
    source: str,
    pause_tokens: bool = False,
  ) -> HFTokenizer:
    """Wraps a `tokenizers.Tokenizer` built in memory. `specials`: {role: id} for 'bos', 'eos', 'pad'
    and optionally 'sep' (a missing bos / pad falls back to eos, as for files; 'unk' is ignored);
    `add_bos`: whether the model's tokenizer puts BOS before a text (`encode_with_specials`)."""
    unknown = set(specials) - set(_ROLES) - {"unk"}
    if unknown:
      raise ValueError(f"{source}: unknown special-token roles {sorted(unknown)}; use {_ROLES}.")
    size = int(tok.get_vocab_size(with_added_tokens=True))
    named = {r: int(i) for r, i in specials.items() if r in _ROLES and i is not None}
    for role, i in named.items():
      if not 0 <= i < size:
        raise ValueError(f"{source}: the {role} id {i} is outside the vocabulary [0, {size}).")
    out = cls.__new__(cls)
    out._setup(  # pylint: disable=protected-access
      tok,
      named,
      add_bos=bool(add_bos),
      add_eos=None,
      chat_template=chat_template,
      source=source,
      pause_tokens=pause_tokens,
    )
    return out

  def _setup(
    self,
    tok: Any,
    named: dict[str, int],
    *,
    add_bos: bool | None,
    add_eos: bool | None,
    chat_template: str | None,
    source: str,
    pause_tokens: bool,
  ) -> None:
    """The shared part of both constructors: specials, BOS / EOS rules, chat template, stop ids.
    `add_bos` / `add_eos` None: as the tokenizer's post-processor does."""
    self._tok, self.path = tok, source
    self._base_size = int(tok.get_vocab_size(with_added_tokens=True))
    self._init_specials(_resolve_specials(named, source), pause_tokens)
    prefix, suffix = post_processor_specials(tok)
    if add_bos is not None:
      prefix = (self.bos_id,) if add_bos else ()
    if add_eos is not None:
      suffix = (self.eos_id,) if add_eos else ()
    self._prefix, self._suffix = prefix, suffix
    self.add_bos = bool(prefix)
    self.chat_template = chat_template or None
    # Token strings the template sees: the roles the tokenizer names (not the eos fallbacks).
    self._template_tokens = {f"{r}_token": tok.id_to_token(i) for r, i in named.items() if r in _ROLES}
    self.stop_ids = (self.eos_id, *[i for i in self._end_of_turn_ids() if i != self.eos_id])

  def _end_of_turn_ids(self) -> tuple[int, ...]:
    """The special token the chat template closes an assistant message with (empty without a template,
    or when what follows the reply is not a special token: then EOS alone ends an answer)."""
    if not self.chat_template:
      return ()
    text = chat_lib.end_of_turn(self.chat_template, **self._template_tokens)
    ids = self._encode(text) if text else []
    special = {int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    return (ids[0],) if ids and ids[0] in special else ()

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template's text of `messages` (what transformers' `apply_chat_template(..., tokenize=False)`
    gives); tokenise it with `encode`, which adds no specials: the text holds them, e.g. its BOS."""
    if not self.chat_template:
      raise ValueError(
        f"the tokenizer {self.path!r} has no chat template (no chat_template in tokenizer_config.json, no "
        "chat_template.jinja); drop --chat_template."
      )
    return chat_lib.render(
      self.chat_template, messages, add_generation_prompt=add_generation_prompt, **self._template_tokens
    )

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
    self._prefix, self.add_bos = (self.bos_id,), True  # as transformers' Llama / Gemma SentencePiece
    self.stop_ids = (self.eos_id,)

  def _encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def _decode_run(self, ids: list[int]) -> str:
    return self._sp.decode(ids) if ids else ""


def load_gguf_tokenizer(path: str, *, pause_tokens: bool = False) -> HFTokenizer:
  """The GGUF file's tokenizer as an `HFTokenizer` (special ids, BOS rule and chat template from the
  metadata; lime_jax/gguf/tokenizer.py builds it)."""
  from lime_jax.gguf import reader as gguf_reader  # pylint: disable=import-outside-toplevel
  from lime_jax.gguf import tokenizer as gguf_tokenizer  # pylint: disable=import-outside-toplevel

  ckpt = gguf_reader.GGUFCheckpoint.open(path)
  meta = gguf_tokenizer.tokenizer_metadata(ckpt)
  return HFTokenizer.from_tokenizer(
    gguf_tokenizer.build_tokenizer(ckpt),
    specials={role: i for role, i in meta["ids"].items() if role in ("bos", "eos", "pad", "sep")},
    add_bos=meta["add_bos"],
    chat_template=meta["chat_template"],
    source=ckpt.path,
    pause_tokens=pause_tokens,
  )


def load_tokenizer(path: str, *, pause_tokens: bool = False) -> HFTokenizer | SentencePieceTokenizer:
  """The tokenizer at `path`: a tokenizer.json, a folder holding one, a SentencePiece .model, or a GGUF
  checkpoint (a .gguf file or a folder holding one and no config.json: its `tokenizer.ggml.*` metadata,
  lime_jax/gguf/tokenizer.py)."""
  from lime_jax.gguf import reader as gguf_reader  # pylint: disable=import-outside-toplevel

  p = pathlib.Path(os.path.expanduser(str(path)))
  if gguf_reader.gguf_file(str(p)):  # the one rule of what a GGUF checkpoint path is
    return load_gguf_tokenizer(str(p), pause_tokens=pause_tokens)
  if p.is_dir():
    json_path = p / TOKENIZER_JSON
    if not json_path.is_file():
      raise ValueError(
        f"tokenizer folder {str(path)!r} holds no {TOKENIZER_JSON}; point "
        "config.data.tokenizer at a tokenizer.json, a folder with one, a "
        "SentencePiece .model file or a .gguf file."
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
