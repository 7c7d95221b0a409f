"""UTF-8 bytes that target tokens decode to: the denominator of bits per byte.

Bits per byte = (sum of the target tokens' CE in nats) / ln 2 / (UTF-8 bytes those targets decode to,
specials excluded; `losses.token_metrics.lm_metrics`); it compares models with different tokenizers.
Each eval window's bytes are counted after the end of the window before it (`target_bytes`), so
characters cut between windows count once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def special_ids(tokenizer: Any) -> set[int]:
  """The ids that decode to no text (bos / eos / pad / sep / pauses, and the byte tokenizer's 0..15)."""
  ids = {
    getattr(tokenizer, f"{n}_id", -1)
    for n in ("pad", "bos", "eos", "sep", "pause_start", "pause", "pause_end")
  }
  ids.update(range(int(getattr(tokenizer, "num_special", 0))))
  return {int(i) for i in ids if i is not None and int(i) >= 0}


def target_bytes(tokenizer: Any, targets_NT: np.ndarray, mask_NT: np.ndarray, context: int = 8) -> np.ndarray:
  """float32[N]: UTF-8 bytes of each row's masked, non-special targets, the rows being consecutive
  pieces of one stream (eval windows). Row n is decoded after the last `context` tokens of the row
  before, and counts the bytes it adds, so a character split between rows is counted once in the sum."""
  specials = special_ids(tokenizer)
  out = np.zeros((targets_NT.shape[0],), np.float32)
  size = lambda ids: len(tokenizer.decode(ids).encode("utf-8")) if ids else 0
  prev: list[int] = []
  for n in range(targets_NT.shape[0]):
    ids = [int(t) for t, m in zip(targets_NT[n], mask_NT[n]) if m > 0 and int(t) not in specials]
    if ids:
      out[n] = size(prev + ids) - size(prev)
      prev = ids[-context:]
  return out
