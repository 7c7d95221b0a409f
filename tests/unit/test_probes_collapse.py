"""Collapse probe: the paper's toy numbers, exact zero for identical prompts, > 0 for a difference."""

from __future__ import annotations

import numpy as np
import pytest

from lime_jax.probes import collapse, collapse_toys
from tests.conftest import random_params, tiny_model_config


def test_total_variation_toy_matches_spec_means():
  """docs/methods.md §6 (Glasses App. C.3): means over 5 seeds within 10% at every listed n."""
  ours = collapse_toys.total_variation_means(seeds=range(5))
  for n, spec in collapse_toys.PUBLISHED_TV_MEANS.items():
    assert abs(ours[n] - spec) <= 0.1 * spec, (n, ours[n], spec)


def test_total_variation_definition():
  """No 1/2 factor, and only the first 200 entries move: an independent direct computation."""
  rng = np.random.default_rng(3)
  x = rng.random(300)
  x_star = x.copy()
  x_star[:200] += rng.random(200) * 0.1
  p, q = np.exp(x) / np.exp(x).sum(), np.exp(x_star) / np.exp(x_star).sum()
  assert collapse_toys.total_variation(300, 3) == pytest.approx(np.abs(p - q).sum(), rel=1e-12)


def test_random_attention_toy_distance_shrinks_with_n():
  d = collapse_toys.random_attention_distances([1, 11, 101])
  assert d[1]["linf"] > d[11]["linf"] > d[101]["linf"] > 0


def test_family_texts():
  rng = np.random.default_rng(0)
  assert collapse.family_texts("repeated_ones", 3, rng) == ("111", "1111")
  p, q = collapse.family_texts("uniform_digits", 5, rng)
  assert len(p) == 5 and p.endswith("1") and q == p + "1"
  assert collapse.family_texts("ones_commas", 7, rng) == ("111,111,1", "111,111,11")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_collapse_distance_zero_for_identical_positive_for_difference(dtype):
  cfg = tiny_model_config(num_kv_heads=2)
  params = random_params(cfg)
  bos, one = 1, 17
  same = collapse.collapse_distance(params, cfg, [bos, one], [bos, one], dtype)
  for key in ("heads_linf", "chunks_linf", "l1"):
    assert np.all(same[key] == 0.0), key
  diff = collapse.collapse_distance(params, cfg, [bos, one], [bos, one, one], dtype)  # n = 1: P_1 vs P*_1
  assert diff["heads_linf"].shape == (cfg.num_heads,) and diff["chunks_linf"].shape == (cfg.num_heads,)
  assert np.all(diff["heads_linf"] > 0) and np.all(diff["chunks_linf"] > 0) and diff["l1"] > 0


def test_head_outputs_match_a_manual_attention():
  """The 'heads' reading equals probabilities x values recomputed from the collected layer outputs,
  and padding a prompt does not change it (causal model)."""
  cfg = tiny_model_config(num_layers=1)
  params = random_params(cfg)
  pcfg = collapse.common.probe_model_cfg(cfg, explicit=True)
  ids = [1, 20, 21, 22]
  rep = collapse.last_token_representations(params, pcfg, [ids, ids[:3]], num_rows=2)
  _, col = collapse.common.forward(params, pcfg, np.asarray([ids]), ("value", "attn_probs", "hidden"))
  probs = np.asarray(col["attn_probs"][0][0, :, -1])  # [N, S]
  v = np.asarray(col["value"][0][0])  # [S, R, H]
  manual = np.einsum("ns,snh->nh", probs, v)  # R = N here
  np.testing.assert_allclose(rep["heads"][0], manual, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rep["hidden"][0], np.asarray(col["hidden"][0][0, -1]), rtol=1e-6)


def test_only_the_last_query_row_of_attention_is_formed(monkeypatch):
  """No forward asks for attention probabilities over the whole prompt: the one that collects them feeds
  a single query token (the full [L, B, N, T, T] collection took 4.3 GB per prompt at T = 2002)."""
  calls = []
  real = collapse.Transformer

  class Spy:
    def __init__(self, cfg):
      self.module = real(cfg)

    def apply(self, variables, tokens_BT, *args, **kwargs):
      calls.append((tokens_BT.shape, tuple(kwargs.get("collect", ()))))
      return self.module.apply(variables, tokens_BT, *args, **kwargs)

  monkeypatch.setattr(collapse, "Transformer", Spy)
  monkeypatch.setattr(collapse.common, "forward", None)  # the full forward is not used
  collapse.last_token_fn.cache_clear()
  try:
    cfg = tiny_model_config()
    pcfg = collapse.common.probe_model_cfg(cfg, explicit=True)
    rep = collapse.last_token_representations(random_params(cfg), pcfg, [[1, 17, 17], [1, 17]])
  finally:
    collapse.last_token_fn.cache_clear()
  assert rep["heads"].shape == (2, cfg.num_heads, cfg.head_dim)
  assert rep["layers"].shape == (2, cfg.num_layers, cfg.d_model)
  with_probs = [shape for shape, collect in calls if "attn_probs" in collect]
  assert with_probs == [(2, 1)], calls


def test_per_layer_distances_are_linf_over_the_norm():
  """layers_linf / layers_rel against the literal max |a - b| and max |a - b| / max |a| per layer."""
  rng = np.random.default_rng(0)
  a = {
    "hidden": rng.normal(size=(2, 8)),
    "heads": rng.normal(size=(2, 2, 4)),
    "layers": rng.normal(size=(2, 3, 8)),
  }
  b = {k: v + 1e-3 * rng.normal(size=v.shape) for k, v in a.items()}
  b["layers"][1, 2] = a["layers"][1, 2]  # one layer exactly collapsed
  d = collapse.pair_distances(a, b, num_heads=2)
  for i in range(2):
    for layer in range(3):
      linf = max(abs(x - y) for x, y in zip(a["layers"][i, layer], b["layers"][i, layer]))
      assert d["layers_linf"][i, layer] == pytest.approx(linf, rel=1e-12)
      assert d["layers_rel"][i, layer] == pytest.approx(
        linf / max(abs(x) for x in a["layers"][i, layer]), rel=1e-12
      )
  assert d["layers_rel"][1, 2] == 0.0


def test_padding_buckets():
  """Powers of two up to 512, then multiples of a sixteenth of the next power of two: never under n, at
  most 12.5% padding above 512 tokens."""
  bucket = collapse.common.bucket
  assert [bucket(n) for n in (1, 16, 17, 100, 512)] == [16, 16, 32, 128, 512]
  assert [bucket(n) for n in (513, 2002, 2048, 2049, 2668)] == [576, 2048, 2048, 2304, 2816]
  assert bucket(5, minimum=8) == 8
  for n in range(513, 20000, 37):
    assert n <= bucket(n) <= 1.125 * n + 1


def test_forward_without_logits_collects_the_same():
  """`common.forward(logits=False)`: no logits (never formed), the same per-layer collections."""
  cfg = tiny_model_config()
  params = random_params(cfg)
  ids = np.asarray([[1, 20, 21, 22]])
  logits, col = collapse.common.forward(params, cfg, ids, ("hidden", "value"))
  none, col_only = collapse.common.forward(params, cfg, ids, ("hidden", "value"), logits=False)
  assert logits.shape == (1, 4, cfg.vocab_size) and none is None
  for name in ("hidden", "value"):
    np.testing.assert_array_equal(np.asarray(col[name]), np.asarray(col_only[name]))
