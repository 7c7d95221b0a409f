"""lime_jax.inspect on the plain model: cached activations against literal formulas, edits with known
answers (patching, steering, ablating a sub-layer), refusals, the logit lens. Every topology and LIMe
router: tests/integration/test_inspect_topologies.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import inspect
from lime_jax.model import Transformer, init_params
from lime_jax.model.routers import NAMES as ROUTERS
from lime_jax.model.topologies import NAMES as TOPOLOGIES
from lime_jax.model.transformer import unembed
from tests.conftest import tiny_model_config

L, B, T = 3, 2, 7
# Topologies whose layers read and write one residual stream (DenseFormer's next layer reads a weighted
# average, Hyper-Connections' a mix of streams).
ONE_STREAM = ("plain", "lime", "value_residual")
CASES = [(t, None) for t in TOPOLOGIES if t != "lime"] + [("lime", r) for r in ROUTERS]


def model_of(topology: str = "plain", router: str | None = None, seed: int = 0) -> inspect.Model:
  overrides = dict(topology=topology, num_layers=L, attention_impl="explicit")
  cfg = tiny_model_config(**overrides)
  if router is not None:
    cfg = dataclasses.replace(cfg, lime=dataclasses.replace(cfg.lime, router=router))
  return inspect.Model(cfg, init_params(cfg, jax.random.key(seed)))


def tokens_of(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 61, (B, T)).astype(np.int32)


def forward_of(model: inspect.Model, tokens_BT) -> np.ndarray:
  logits, _ = Transformer(model.cfg).apply({"params": model.params}, jnp.asarray(tokens_BT))
  return np.asarray(logits)


def close(a, b, tol: float = 1e-5) -> bool:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= tol


@pytest.fixture(scope="module")
def plain() -> inspect.Model:
  return model_of()


def test_attention_probabilities_are_softmax_of_the_cached_queries_and_keys(plain):
  _, acts = inspect.run_with_cache(plain, tokens_of(), names=("q", "k", "attn_probs"))
  q_BTNH, k_BTRH = np.asarray(acts["q"][1], np.float64), np.asarray(acts["k"][1], np.float64)
  scores_BNTS = np.einsum("btnh,bsnh->bnts", q_BTNH, k_BTRH) / np.sqrt(q_BTNH.shape[-1])
  scores_BNTS = np.where(np.tril(np.ones((T, T), bool)), scores_BNTS, -np.inf)
  probs_BNTS = np.exp(scores_BNTS - scores_BNTS.max(-1, keepdims=True))
  probs_BNTS /= probs_BNTS.sum(-1, keepdims=True)
  assert close(acts["attn_probs"][1], probs_BNTS)


def test_only_what_is_asked_is_returned(plain):
  logits, acts = inspect.run_with_cache(plain, tokens_of()[0], names=("mlp_out",), logits=False)
  assert logits is None and list(acts) == ["mlp_out"] and acts["mlp_out"].shape[:2] == (L, 1)


def test_patching_a_layers_stream_from_run_a_makes_b_continue_as_a(plain):
  a_BT, b_BT = tokens_of(1), tokens_of(2)
  logits_a, cache_a = inspect.run_with_cache(plain, a_BT, names=("hidden",))
  _, clean_b = inspect.run_with_cache(plain, b_BT, names=("hidden",))
  patch = inspect.Edit("hidden", "replace", cache_a["hidden"], layers=(1,), per_layer=True)
  logits_b, patched_b = inspect.run_with_cache(plain, b_BT, names=("hidden",), edits=[patch])
  assert np.array_equal(patched_b["hidden"][0], clean_b["hidden"][0])  # before the patch: B
  assert close(patched_b["hidden"][1:], cache_a["hidden"][1:])  # from the patch on: A
  assert close(logits_b, logits_a)
  assert not close(clean_b["hidden"][2], cache_a["hidden"][2], 1e-2)


def test_steering_adds_at_one_layer_and_position_and_stays_causal(plain):
  tokens_BT = tokens_of()
  logits, clean = inspect.run_with_cache(plain, tokens_BT, names=("hidden", "resid_pre"))
  v_D = np.linspace(-1.0, 1.0, plain.cfg.d_model).astype(np.float32)
  steer = inspect.Edit("hidden", "add", v_D, layers=(1,), positions=(3,))
  steered, acts = inspect.run_with_cache(plain, tokens_BT, names=("hidden", "resid_pre"), edits=[steer])
  expected_BTD = np.array(clean["hidden"][1])
  expected_BTD[:, 3] += v_D
  assert close(acts["resid_pre"][2], expected_BTD)  # layer 2 reads the steered stream
  assert np.array_equal(acts["hidden"][0], clean["hidden"][0])
  assert close(steered[:, :3], logits[:, :3])  # earlier positions cannot see it
  assert not close(steered[:, 3], logits[:, 3], 1e-3)


def test_scaling_attention_out_to_zero_removes_it(plain):
  names = ("attn_out", "resid_pre", "resid_mid")
  _, acts = inspect.run_with_cache(
    plain, tokens_of(), names=names, edits=[inspect.Edit("attn_out", "scale", 0.0)]
  )
  assert not np.any(acts["attn_out"]) and np.array_equal(acts["resid_mid"], acts["resid_pre"])


@pytest.mark.parametrize(
  "edit_kwargs,names,match",
  [
    (dict(name="nope", op="add", value=0.0), (), "unknown"),
    (dict(name="hidden", op="shift", value=0.0), (), "op="),
    (dict(name="attn_probs", op="scale", value=0.0), (), "not edited"),
    (dict(name="final_norm", op="add", value=0.0, layers=(1,)), (), "no layers"),
    (dict(name="router", op="scale", value=0.0, positions=(1,)), (), "no token axis"),
  ],
)
def test_bad_edits_are_refused_early(edit_kwargs, names, match):
  with pytest.raises(ValueError, match=match):
    inspect.Edit(**edit_kwargs)


def test_bad_requests_name_the_fix(plain):
  tokens_BT = tokens_of()
  with pytest.raises(ValueError, match="needs topology 'lime'"):
    inspect.run_with_cache(plain, tokens_BT, names=("router",))
  with pytest.raises(ValueError, match="unknown"):
    inspect.run_with_cache(plain, tokens_BT, names=("residual",))
  with pytest.raises(ValueError, match="outside the model's 3"):
    inspect.run_with_cache(plain, tokens_BT, edits=[inspect.Edit("hidden", "add", 1.0, layers=(3,))])
  with pytest.raises(ValueError, match="outside the 7 tokens"):
    inspect.run_with_cache(plain, tokens_BT, edits=[inspect.Edit("hidden", "add", 1.0, positions=(7,))])
  with pytest.raises(ValueError, match="leading axis of 3"):
    inspect.run_with_cache(plain, tokens_BT, edits=[inspect.Edit("q", "add", np.ones(4), per_layer=True)])
  xla = inspect.Model(dataclasses.replace(plain.cfg, attention_impl="xla"), plain.params)
  with pytest.raises(ValueError, match="attention_impl='explicit'"):
    inspect.run_with_cache(xla, tokens_BT, names=("attn_probs",))


def test_logit_lens_ends_at_the_models_distribution(plain, tmp_path):
  tokens_BT = tokens_of()
  targets_BT = np.roll(tokens_BT, -1, axis=1)
  lens = inspect.logit_lens(plain, tokens_BT, targets_BT, top_k=4)
  assert lens.top_ids_LBTK.shape == (L, B, T, 4) and lens.target_rank_LBT.shape == (L, B, T)
  probs_BTV = np.asarray(jax.nn.softmax(forward_of(plain, tokens_BT), axis=-1), np.float64)
  order_BTV = np.argsort(-probs_BTV, axis=-1)
  np.testing.assert_array_equal(lens.top_ids_LBTK[-1], order_BTV[..., :4])
  target_p_BT = np.take_along_axis(probs_BTV, targets_BT[..., None], -1)[..., 0]
  assert close(lens.target_prob_LBT[-1], target_p_BT)
  rank_BT = np.sum(probs_BTV > target_p_BT[..., None], axis=-1)
  np.testing.assert_array_equal(lens.target_rank_LBT[-1], rank_BT)
  # An earlier layer's reading is its own stream through the same readout.
  _, acts = inspect.run_with_cache(plain, tokens_BT, names=("hidden",))
  top0_BT = np.argmax(np.asarray(unembed(plain.params, plain.cfg, acts["hidden"][0])), -1)
  np.testing.assert_array_equal(lens.top_ids_LBTK[0, ..., 0], top0_BT)
  path = inspect.plot_logit_lens(lens, str(tmp_path / "lens.png"))
  assert (tmp_path / "lens.png").stat().st_size > 1000 and path.endswith("lens.png")
