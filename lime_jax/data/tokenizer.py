"""Character and byte tokenizers sharing one fixed block of 16 special ids.

Ids 0..6 are PAD, BOS, EOS, SEP, PAUSE_START, PAUSE, PAUSE_END; ids 7..15 are reserved (so that new
specials never shift the ids of characters or bytes); regular symbols start at id 16.

`CharTokenizer` gives one id per character of an alphabet (synthetic tasks). With `drop_spaces=True`
(the default) spaces are not encoded at all: the task formats separate every symbol by one space and
never put two numbers next to each other, so the spaces carry no information (`10 - ( 1` and
`10-(1` are the same token sequence). `decode` then joins the characters without spaces.

`ByteTokenizer` gives one id per UTF-8 byte (text corpora): id = byte + 16, vocab 272.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SEP_ID = 3
PAUSE_START_ID = 4
PAUSE_ID = 5
PAUSE_END_ID = 6
NUM_SPECIAL = 16  # ids 7..15 reserved.

SPECIAL_NAMES: tuple[str, ...] = (
  "<pad>",
  "<bos>",
  "<eos>",
  "<sep>",
  "</pause_start>",
  "<pause>",
  "</pause_end>",
) + tuple(f"<reserved_{i}>" for i in range(7, NUM_SPECIAL))


class _SpecialIds:
  """The special-id attributes every tokenizer exposes."""

  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  sep_id = SEP_ID
  pause_start_id = PAUSE_START_ID
  pause_id = PAUSE_ID
  pause_end_id = PAUSE_END_ID
  num_special = NUM_SPECIAL


def _strip_trailing_pad(ids: Iterable[int]) -> list[int]:
  """Ids as python ints with the PAD run at the end removed."""
  out = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
  while out and out[-1] == PAD_ID:
    out.pop()
  return out


def _check_id(i: int, vocab_size: int) -> None:
  if not 0 <= i < vocab_size:
    raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size}).")


class CharTokenizer(_SpecialIds):
  """One id per character of `alphabet` (ids 16..), after the 16 special ids.

  Args:
    alphabet: the characters the task uses, each once (order fixes the ids).
    drop_spaces: if True, spaces in `encode` input are skipped and `decode` emits none; the alphabet
      must then not contain a space.
  """

  def __init__(self, alphabet: str, drop_spaces: bool = True):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"alphabet {alphabet!r} repeats a character; each must appear once.")
    if drop_spaces and " " in alphabet:
      raise ValueError(
        "alphabet contains ' ' but drop_spaces=True; remove the space or set drop_spaces=False."
      )
    self.alphabet = alphabet
    self.drop_spaces = drop_spaces
    self.vocab_size = NUM_SPECIAL + len(alphabet)
    self._char_to_id = {ch: NUM_SPECIAL + i for i, ch in enumerate(alphabet)}

  def encode(self, text: str) -> list[int]:
    """Ids of the characters of `text` (spaces skipped when drop_spaces); no BOS/EOS added."""
    ids = []
    for ch in text:
      if ch == " " and self.drop_spaces:
        continue
      if ch not in self._char_to_id:
        raise ValueError(f"character {ch!r} of {text!r} is not in the tokenizer alphabet {self.alphabet!r}.")
      ids.append(self._char_to_id[ch])
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`: characters joined without spaces, specials as `<name>`, trailing PADs dropped."""
    out = []
    for i in _strip_trailing_pad(ids):
      _check_id(i, self.vocab_size)
      out.append(SPECIAL_NAMES[i] if i < NUM_SPECIAL else self.alphabet[i - NUM_SPECIAL])
    return "".join(out)


class ByteTokenizer(_SpecialIds):
  """One id per UTF-8 byte: id = byte + 16 (vocab 272), after the 16 special ids."""

  vocab_size = NUM_SPECIAL + 256

  def encode(self, text: str) -> list[int]:
    """Ids of the UTF-8 bytes of `text`; no BOS/EOS added."""
    return self.encode_bytes(text.encode("utf-8"))

  def encode_bytes(self, data: bytes) -> list[int]:
    """Ids of raw bytes."""
    return (np.frombuffer(data, dtype=np.uint8).astype(np.int32) + NUM_SPECIAL).tolist()

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids` (invalid UTF-8 replaced), specials as `<name>`, trailing PADs dropped."""
    parts: list[str] = []
    run = bytearray()
    for i in _strip_trailing_pad(ids):
      _check_id(i, self.vocab_size)
      if i >= NUM_SPECIAL:
        run.append(i - NUM_SPECIAL)
        continue
      parts.append(run.decode("utf-8", errors="replace"))
      run = bytearray()
      parts.append(SPECIAL_NAMES[i])
    parts.append(run.decode("utf-8", errors="replace"))
    return "".join(parts)
