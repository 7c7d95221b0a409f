"""evals/scoring.py: batched continuation log-likelihoods equal a direct sum over one row's logits, in
the rows' order, with the greedy flag; `bucket` widths."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lime_jax.evals import scoring
from lime_jax.model import Transformer
from tests.conftest import random_params, tiny_model_config


def test_continuation_scores_equal_a_direct_sum_over_the_logits():
  cfg = tiny_model_config()
  params = random_params(cfg, std=0.3)
  rng = np.random.default_rng(0)
  rows = [(list(rng.integers(1, cfg.vocab_size, size)), n) for size, n in ((5, 2), (40, 7), (3, 1), (17, 16))]
  # One more row whose continuation is the model's own greedy continuation of its context.
  ids = list(rng.integers(1, cfg.vocab_size, 6))
  for _ in range(3):
    logits_TV = Transformer(cfg).apply({"params": params}, np.asarray([ids], np.int32))[0][0]
    ids.append(int(np.argmax(logits_TV[-1])))
  rows.append((ids, 3))
  got = scoring.continuation_scores(scoring.token_scorer(cfg), params, rows, pad_id=0, batch_size=2)
  for (ids, n), (ll, greedy) in zip(rows, got):
    logits_TV = Transformer(cfg).apply({"params": params}, np.asarray([ids[:-1]], np.int32))[0][0]
    logp_TV = np.asarray(jax.nn.log_softmax(logits_TV, axis=-1))
    positions = range(len(ids) - 1 - n, len(ids) - 1)
    assert ll == pytest.approx(sum(logp_TV[p, ids[p + 1]] for p in positions), rel=1e-5, abs=1e-5)
    assert greedy == all(np.argmax(logp_TV[p]) == ids[p + 1] for p in positions)
  assert got[-1][1] and not got[1][1]  # the greedy row is greedy; a random one is not
  with pytest.raises(ValueError, match="exceeds the model's 8 positions"):
    scoring.continuation_scores(scoring.token_scorer(cfg), params, rows[1:2], 0, max_width=8)


def test_bucket_widths():
  assert [scoring.bucket(n) for n in (1, 16, 17, 500, 513, 2668)] == [16, 16, 32, 512, 576, 2816]
  assert scoring.bucket(3, minimum=4) == 4
