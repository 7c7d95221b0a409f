"""Decoding a model: greedy answers and continuations with the KV cache against recomputation, greedy
exact match against teacher forcing, and sampling with the cache."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.evals import greedy_answers
from lime_jax.losses import token_metrics
from lime_jax.model import Transformer, decode, init_params
from tests.conftest import tiny_model_config
from tests.unit.test_decode import CFG, _answer_mask

V, T = 20, 10


def _setup(B=4, prompt_lens=(3, 5, 4, 6), cfg=CFG):
  params = init_params(cfg, jax.random.key(0))
  inputs = np.array(jax.random.randint(jax.random.key(1), (B, T), 7, V))
  return params, inputs, _answer_mask(B, prompt_lens)


def _greedy_by_recomputation(params, inputs, prompt_lens, cfg=CFG):
  """Reference: for every row, feed its prompt, then append argmax tokens; full forward each step."""
  model = Transformer(cfg)
  preds = np.zeros_like(inputs)
  for b, p in enumerate(prompt_lens):
    seq = list(inputs[b, :p])
    while len(seq) <= T:
      logits, _ = model.apply({"params": params}, jnp.asarray([seq]))
      seq.append(int(jnp.argmax(logits[0, -1])))
    preds[b] = seq[1 : T + 1]  # prediction after position t
  return preds


def test_greedy_with_cache_equals_greedy_by_recomputation():
  params, inputs, answer = _setup()
  prompt_lens = decode.prompt_lengths(answer)
  expected = _greedy_by_recomputation(params, inputs, prompt_lens)
  # prefill up to the shortest prompt, or a single token; steps on the unrolled or the stacked layers
  for prefill, unroll in ((3, True), (1, False), (3, False)):
    got = np.asarray(
      decode.greedy_predictions(
        CFG, params, jnp.asarray(inputs), jnp.asarray(prompt_lens), prefill_len=prefill, unroll=unroll
      )
    )
    for b, p in enumerate(prompt_lens):  # predictions from the last prompt position on
      np.testing.assert_array_equal(got[b, p - 1 :], expected[b, p - 1 :])
  np.testing.assert_array_equal(
    decode.decode_batch(CFG, params, {"inputs": inputs, "answer_mask": answer}), got
  )


def test_greedy_continuations_equal_greedy_by_recomputation():
  # Larger weights than CFG's: attention then moves the argmax, so a decoding step that saw the tokens
  # prefilled after a shorter row's prompt (random here) would give other tokens.
  cfg = dataclasses.replace(CFG, init_std=0.3)
  params, inputs, answer = _setup(cfg=cfg)
  prompt_lens = decode.prompt_lengths(answer)
  expected = _greedy_by_recomputation(params, inputs, prompt_lens, cfg)
  new = T - max(prompt_lens) + 1  # the longest prompt's predictions reach the buffer's end
  assert not decode.use_unrolled(cfg, params, new)  # a tiny model: the steps scan the stacked layers
  for unroll in (True, None):
    got = np.asarray(decode.greedy_continuations(cfg, params, inputs, prompt_lens, new, unroll=unroll))
    assert got.shape == (4, new) and len(np.unique(got)) > 4
    for b, p in enumerate(prompt_lens):
      np.testing.assert_array_equal(got[b], expected[b, p - 1 : p - 1 + new])
  wide = np.pad(inputs, ((0, 0), (0, 6)))  # a wider buffer (padding) and one new token change nothing
  np.testing.assert_array_equal(decode.greedy_continuations(cfg, params, wide, prompt_lens, new), got)
  np.testing.assert_array_equal(decode.greedy_continuations(cfg, params, wide, prompt_lens, 1), got[:, :1])


def test_greedy_continuations_stop_once_every_row_has_stopped():
  """With `stop_ids`, each row's tokens up to its first stop id are those decoded without them, for
  both step paths; the loop ends once every row has stopped (the columns after are left 0)."""
  cfg = dataclasses.replace(CFG, init_std=0.3)
  params, inputs, answer = _setup(cfg=cfg)
  prompt_lens = decode.prompt_lengths(answer)
  new = 5
  full = np.asarray(decode.greedy_continuations(cfg, params, inputs, prompt_lens, new))
  stops = {int(full[0, 1]), int(full[2, 3])}  # row 0 stops at its 2nd token, row 2 at its 4th at the latest
  for unroll in (True, False):
    got = np.asarray(
      decode.greedy_continuations(cfg, params, inputs, prompt_lens, new, unroll=unroll, stop_ids=stops)
    )
    for b in range(len(full)):
      hits = [j for j, t in enumerate(full[b]) if t in stops]
      end = hits[0] + 1 if hits else new
      np.testing.assert_array_equal(got[b, :end], full[b, :end])
  every = set(range(V))  # every token stops: only the first token is decoded
  got = np.asarray(decode.greedy_continuations(cfg, params, inputs, prompt_lens, new, stop_ids=every))
  np.testing.assert_array_equal(got[:, 0], full[:, 0])
  assert np.all(got[:, 1:] == 0) and np.any(full[:, 1:] != 0)


def test_sampling_with_the_cache_matches_greedy_without_it():
  cfg = tiny_model_config()
  params = init_params(cfg, jax.random.key(1))
  prompt = jnp.asarray([[1, 5, 9, 13], [1, 7, 7, 2]], jnp.int32)
  model = Transformer(cfg)
  tokens = np.asarray(prompt)
  for _ in range(6):  # greedy reference: a full forward per token, no cache
    logits, _ = model.apply(
      {"params": params}, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    )
    tokens = np.concatenate([tokens, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], axis=1)
  greedy = tokens[:, 4:]
  rng = jax.random.key(3)
  np.testing.assert_array_equal(np.asarray(decode.sample(cfg, params, prompt, rng, 6, 0.0)), greedy)
  np.testing.assert_array_equal(np.asarray(decode.sample(cfg, params, prompt, rng, 6, 1.0, 1)), greedy)
  a = np.asarray(decode.sample(cfg, params, prompt, rng, 6, 3.0))
  assert (a == np.asarray(decode.sample(cfg, params, prompt, rng, 6, 3.0))).all()  # seeded
  assert a.shape == (2, 6) and not (a == greedy).all()


V, T = 20, 10


def test_greedy_exact_match_equals_teacher_forced_and_per_position_counts():
  params, inputs, answer = _setup()
  prompt_lens = decode.prompt_lengths(answer)
  pred = decode.decode_batch(CFG, params, {"inputs": inputs, "answer_mask": answer})
  # Targets: rows 0 and 2 are the model's own greedy answers (exact), row 1 is wrong at answer position 1,
  # row 3 at answer position 0 (so its later positions are off the greedy path too).
  targets = np.roll(inputs, -1, axis=1)
  for b, p in enumerate(prompt_lens):
    targets[b, p - 1 : p + 2] = pred[b, p - 1 : p + 2]
    inputs[b, p : p + 2] = pred[b, p - 1 : p + 1]  # teacher forcing feeds the target answer
  targets[1, prompt_lens[1]] = (pred[1, prompt_lens[1]] + 1) % V
  targets[3, prompt_lens[3] - 1] = (pred[3, prompt_lens[3] - 1] + 1) % V
  inputs[3, prompt_lens[3]] = targets[3, prompt_lens[3] - 1]
  batch = {"inputs": inputs, "targets": targets, "answer_mask": answer, "example_mask": np.ones(4)}
  sums = greedy_answers.generation_sums(decode.decode_batch(CFG, params, batch), batch, T)
  assert sums["exact"] == 2 and sums["examples"] == 4
  np.testing.assert_array_equal(sums["pos_seen"][:4], [4, 4, 4, 0])
  assert sums["pos_right"][0] == 3 and sums["pos_right"][1] in (2, 3)  # row 1 wrong at position 1
  logits, _ = Transformer(CFG).apply({"params": params}, jnp.asarray(inputs))
  tf = token_metrics.answer_metrics(logits, jnp.asarray(targets), jnp.asarray(answer))
  assert float(tf["exact_matches"]) == sums["exact"]  # teacher-forced EM = greedy EM
