"""Tests of data/target_bytes.py and token_metrics.lm_metrics (bits per byte). Continuation scoring:
test_scoring.py; the lm-evaluation-harness backend: tests/integration/test_lm_harness.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lime_jax.data import target_bytes
from lime_jax.data.tokenizer import ByteTokenizer
from lime_jax.losses import token_metrics

TOK = ByteTokenizer()


def test_lm_metrics_and_target_bytes_literal():
  m = token_metrics.lm_metrics(ce_sum=10.0, ce_tokens=5.0, num_bytes=20.0)
  assert m["perplexity"] == pytest.approx(math.exp(2.0))
  assert m["bits_per_byte"] == pytest.approx(10.0 / math.log(2) / 20.0)
  assert m["bytes_per_token"] == pytest.approx(4.0)
  targets = np.array([TOK.encode("héllo") + [TOK.eos_id, TOK.pad_id]], np.int32)  # é: 2 bytes.
  mask = np.ones_like(targets, np.float32)
  assert target_bytes.target_bytes(TOK, targets, mask).tolist() == [6.0]
  # Rows cut inside 'é' and 'ö': the characters count once, in the sum over the consecutive rows.
  stream = np.array(TOK.encode("héllo wörld, ça va") + [TOK.eos_id], np.int32)
  rows = np.stack([stream[i : i + 4] for i in range(0, 20, 4)])
  got = target_bytes.target_bytes(TOK, rows, np.ones_like(rows, np.float32))
  assert got.sum() == len("héllo wörld, ça v".encode()) == 20  # the first 20 bytes.
  assert got.tolist() != [4.0] * 5  # the rows holding the ends of split characters count them.
