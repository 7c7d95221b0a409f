"""Decoding helpers: prompt lengths, the unrolled-loop choice, generation sums and the matrix entropy.
(Decoding a model: tests/integration/test_decoding.py.)"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.evals import greedy_answers
from lime_jax.model import ModelConfig, decode

V, T = 20, 10
CFG = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64)


def _answer_mask(B=4, prompt_lens=(3, 5, 4, 6)) -> np.ndarray:
  answer = np.zeros((B, T), np.float32)
  for b, p in enumerate(prompt_lens):
    answer[b, p - 1 : p + 2] = 1  # three answer targets after the prompt
  return answer


def test_prompt_lengths():
  answer = _answer_mask()
  np.testing.assert_array_equal(decode.prompt_lengths(answer), [3, 5, 4, 6])
  np.testing.assert_array_equal(decode.prompt_lengths(np.zeros((1, T))), [T])


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
