"""Greedy decoding with the KV cache, generation metrics and the matrix entropy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.evals import greedy_answers
from lime_jax.losses import token_metrics
from lime_jax.model import ModelConfig, Transformer, decode, init_params

V, T = 20, 10
CFG = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64)


def _setup(B=4, prompt_lens=(3, 5, 4, 6), cfg=CFG):
  params = init_params(cfg, jax.random.key(0))
  inputs = np.array(jax.random.randint(jax.random.key(1), (B, T), 7, V))
  answer = np.zeros((B, T), np.float32)
  for b, p in enumerate(prompt_lens):
    answer[b, p - 1 : p + 2] = 1  # three answer targets after the prompt
  return params, inputs, answer


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


def test_prompt_lengths():
  _, _, answer = _setup()
  np.testing.assert_array_equal(decode.prompt_lengths(answer), [3, 5, 4, 6])
  np.testing.assert_array_equal(decode.prompt_lengths(np.zeros((1, T))), [T])


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


def test_use_unrolled_by_loop_size_and_topology():
  cfg = dataclasses.replace(CFG, num_layers=2)
  params = {"layers": {"w": jax.ShapeDtypeStruct((2, 1024, 1024), jnp.float32)}}  # 4 MiB a layer
  assert decode.UNROLL_MIN_BYTES == 1024 * 4 * 2**20
  assert not decode.use_unrolled(cfg, params, 1023) and decode.use_unrolled(cfg, params, 1024)
  assert decode.use_unrolled(cfg, params, 1, unroll=True)
  assert not decode.use_unrolled(cfg, params, 10**6, unroll=False)
  lime = dataclasses.replace(cfg, topology="lime")
  assert not decode.use_unrolled(lime, params, 10**6)
  with pytest.raises(ValueError, match="plain"):
    decode.use_unrolled(lime, params, 1, unroll=True)


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


def test_generation_sums_by_hand():
  targets = np.array([[5, 6, 7, 2], [5, 6, 7, 2], [0, 0, 0, 0]])
  answer = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]], np.float32)
  pred = np.array([[9, 6, 7, 2], [9, 6, 8, 2], [1, 1, 1, 1]])
  sums = greedy_answers.generation_sums(
    pred, {"targets": targets, "answer_mask": answer, "example_mask": np.array([1, 1, 0])}, 4
  )
  assert (sums["exact"], sums["examples"], sums["right"], sums["tokens"]) == (1, 2, 5, 6)
  np.testing.assert_array_equal(sums["pos_right"], [2, 1, 2, 0])
  np.testing.assert_array_equal(sums["pos_seen"], [2, 2, 2, 0])


def test_matrix_entropy_against_numpy_eigenvalues():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 6, 5)).astype(np.float32)
  mask = np.ones((3, 6), np.float32)
  mask[1, 4:] = 0
  got = np.asarray(greedy_answers.matrix_entropy(jnp.asarray(z), jnp.asarray(mask)))
  for b in range(3):
    rows = z[b][mask[b] != 0].astype(np.float64)
    eig = np.clip(np.linalg.eigvalsh(rows @ rows.T), 0, None)
    p = eig[eig > 1e-12] / eig.sum()
    np.testing.assert_allclose(got[b], -np.sum(p * np.log(p)), rtol=1e-4)
  collapsed = np.tile(rng.normal(size=(1, 1, 5)), (1, 6, 1)).astype(np.float32)  # all rows identical
  assert abs(float(greedy_answers.matrix_entropy(jnp.asarray(collapsed), jnp.ones((1, 6)))[0])) < 1e-5
  flat = np.eye(4, 5, dtype=np.float32)[None]  # orthonormal rows: log(4)
  np.testing.assert_allclose(
    greedy_answers.matrix_entropy(jnp.asarray(flat), jnp.ones((1, 4)))[0], np.log(4), rtol=1e-5
  )


def test_matrix_entropy_matches_the_probe_implementation():
  probe = __import__("pytest").importorskip("lime_jax.probes.entropy")
  z = np.random.default_rng(1).normal(size=(2, 7, 4)).astype(np.float32)
  got = greedy_answers.matrix_entropy(jnp.asarray(z), jnp.ones((2, 7)))
  for b in range(2):
    np.testing.assert_allclose(got[b], probe.matrix_entropy(z[b], alpha=1.0, convention="none"), rtol=1e-4)
