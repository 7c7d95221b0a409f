"""Probe readings against full forwards: the collapse probe's last-token reading, and the oversquashing
sensitivities against finite differences (exact and Hutchinson) and causality."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import Transformer
from lime_jax.probes import collapse
from lime_jax.probes.oversquash import sensitivity
from tests.conftest import random_params, tiny_model_config


def _full_forward_representations(params, cfg, rows):
  """The probe's previous reading (the reference): every layer's [B, N, T, T] attention probabilities
  from one full forward, the last layer's row at each prompt's last token."""
  ids_BT, lengths_B = collapse.common.pad_rows(rows, 0)
  _, col = collapse.common.forward(params, cfg, ids_BT, ("hidden", "value", "attn_probs"))
  b, last = np.arange(len(ids_BT)), lengths_B - 1
  probs = np.asarray(col["attn_probs"][-1], np.float32)[b, :, last]  # [B, N, S]
  v = np.asarray(col["value"][-1], np.float32)  # [B, S, R, H]
  R = v.shape[2]
  probs = probs.reshape(len(b), R, cfg.num_heads // R, -1)
  heads = np.einsum("brgs,bsrh->brgh", probs, v).reshape(len(b), cfg.num_heads, -1)
  layers = np.swapaxes(np.asarray(col["hidden"], np.float32)[:, b, last], 0, 1)  # [B, L, D]
  return {"hidden": np.asarray(col["hidden"][-1], np.float32)[b, last], "heads": heads, "layers": layers}


def _small_model(topology):
  """(config, parameters) of a 3-layer GQA model, plain or LIMe."""
  import dataclasses

  from lime_jax.model import LimeConfig, init_params

  cfg = tiny_model_config(num_kv_heads=2, num_layers=3)
  if topology == "lime":
    cfg = dataclasses.replace(cfg, topology="lime", lime=LimeConfig(block_size=2))
    return cfg, init_params(cfg, collapse.jax.random.key(0))
  return cfg, random_params(cfg)


@pytest.mark.parametrize("topology", ["plain", "lime"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_last_token_reading_equals_the_full_forward(topology, dtype):
  """The last-query-row reading (prefill + one cached step) gives the full forward's numbers, for prompts
  of several lengths in one padded batch, GQA, the plain and the LIMe stacks: `hidden` bit for bit (the
  prefill is the same forward), `heads` to float rounding (fp32 ~2e-7; bf16 within one bf16 step, the
  last token's query being recomputed by a one-token step).

  Measured (CPU, 2 shared cores, random L=12 D=64 N=4 model, 2 prompts of T=2048, fp32): peak RSS 768 MB
  vs 2256 MB before, 4.1 s vs 4.9 s per call; L=4: 1.5 s vs 2.0 s. The old forward returned
  L x B x N x T x T fp32 probabilities (SmolLM2-135M at T=2002: 4.3 GB per prompt), the new one forms
  one layer's attention at a time and returns [L, B, N, 1, T + 1]."""
  cfg, params = _small_model(topology)
  pcfg = collapse.common.probe_model_cfg(cfg, dtype, explicit=True)
  rng = np.random.default_rng(0)
  rows = [[1, *rng.integers(16, 61, size=k).tolist()] for k in (3, 11, 16, 4)]
  got = collapse.last_token_representations(params, pcfg, rows)
  want = _full_forward_representations(params, pcfg, rows)
  np.testing.assert_array_equal(got["hidden"], want["hidden"])
  tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 0, "atol": 2**-7}
  np.testing.assert_allclose(got["heads"], want["heads"], **tol)
  assert got["layers"].shape == (len(rows), cfg.num_layers, cfg.d_model)
  scale = np.abs(want["layers"]).max(axis=-1, keepdims=True)  # per prompt and layer
  bound = 1e-5 if dtype == "float32" else 2**-6  # the one-token step's rounding, relative
  assert np.all(np.abs(got["layers"] - want["layers"]) <= bound * scale)


@pytest.mark.parametrize("topology", ["plain", "lime"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pair_reading_equals_reading_each_prompt(topology, dtype):
  """`pair_representations` (one prefill of P*_n, read at its last two positions) gives the readings of
  P_n and P*_n prefilled apart (`last_token_representations` of [P_n, P*_n], the probe's reading before)
  to float rounding: the padded batch has other shapes, so the matmuls round differently (fp32: 3e-7
  absolute seen; bf16 within one bf16 step)."""
  cfg, params = _small_model(topology)
  pcfg = collapse.common.probe_model_cfg(cfg, dtype, explicit=True)
  rng = np.random.default_rng(1)
  longer = [[1, *rng.integers(16, 61, size=k).tolist(), 17] for k in (5, 12, 30)]
  got_a, got_b = collapse.pair_representations(params, pcfg, longer, num_rows=4)
  bound = 1e-5 if dtype == "float32" else 2**-6  # relative to the reading's largest entry
  for i, row in enumerate(longer):
    want = collapse.last_token_representations(params, pcfg, [row[:-1], row])
    for name in ("hidden", "heads", "layers"):
      for got, j, which in ((got_a, 0, "P_n"), (got_b, 1, "P*_n")):
        scale = np.abs(want[name][j]).max(axis=-1, keepdims=True)
        err = np.abs(got[name][i] - want[name][j])
        assert np.all(err <= bound * scale), (which, name, i, float((err / scale).max()))
  assert not np.array_equal(got_a["hidden"], got_b["hidden"])  # two different positions were read


@pytest.fixture(scope="module")
def model():
  cfg = tiny_model_config(num_kv_heads=2)
  return cfg, random_params(cfg, seed=1)


@pytest.mark.parametrize("target", ["hidden", "value"])
def test_exact_matches_finite_differences(model, target):
  """Independent check of the exact Jacobian norm: the full Jacobian by central differences (fp64 host)."""
  cfg, params = model
  tokens = np.array([1, 20, 33, 40])
  exact, err = sensitivity(params, cfg, tokens, target, method="exact")
  assert err is None and exact.shape == (4,)
  emb_TD = np.asarray(params["embed"])[tokens].astype(np.float64)
  T, D, h = len(tokens), cfg.d_model, 1e-2
  eye = np.eye(T * D).reshape(T * D, T, D)
  batch = np.concatenate([emb_TD + h * eye, emb_TD - h * eye]).astype(np.float32)  # [2TD, T, D]
  _, out = Transformer(cfg).apply(
    {"params": params},
    jnp.zeros((2 * T * D, T), jnp.int32),
    collect=(target,),
    embeddings_BTD=jnp.asarray(batch),
  )
  y = np.asarray(out.collected[target][-1][:, -1], np.float64).reshape(2 * T * D, -1)
  jac = ((y[: T * D] - y[T * D :]) / (2 * h)).reshape(T, D, -1)
  fd = np.sum(jac**2, axis=(1, 2))
  np.testing.assert_allclose(exact, fd, rtol=2e-2)


@pytest.mark.parametrize("target", ["hidden", "value"])
def test_hutchinson_matches_exact_within_statistical_error(model, target):
  cfg, params = model
  tokens = np.array([1, 20, 33, 40, 17, 25, 50, 18])
  exact, _ = sensitivity(params, cfg, tokens, target, method="exact")
  est, stderr = sensitivity(params, cfg, tokens, target, method="hutchinson", num_samples=512, seed=3)
  z = np.abs(est - exact) / stderr
  assert np.all(z < 4.5), z  # 8 positions x 2 targets: |z| < 4.5 fails by chance with p ~ 1e-4
  assert np.all(stderr < 0.25 * exact)  # and the error bar is informative


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_causal_model_has_zero_sensitivity_after_position(model, method):
  cfg, params = model
  tokens = np.array([1, 20, 33, 40, 17, 25])
  for position in (1, 3):
    sq, _ = sensitivity(params, cfg, tokens, "hidden", position=position, method=method, num_samples=16)
    assert np.all(sq[position + 1 :] == 0.0), sq
    assert np.all(sq[: position + 1] > 0.0), sq
