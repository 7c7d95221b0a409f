"""Backbone tests: HF conversion, collections, attention implementations on explicit masks, refusals,
the random-parameter layout, config validation. (The equivalent paths:
tests/integration/test_model_equivalence.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax import hf
from lime_jax.model import Transformer, init_params
from lime_jax.model.attention import attend
from lime_jax.model.model_config import ModelConfig
from tests.conftest import random_params, replace, tiny_model_config


def _tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 1) -> jax.Array:
  """Random token ids (numpy RNG: eager jax.random compiles a kernel per new shape)."""
  return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length)), jnp.int32)


def _forward(cfg: ModelConfig, params: dict, tokens_BT: jax.Array, **kwargs):
  return Transformer(cfg).apply({"params": params}, tokens_BT, **kwargs)


# Jitted forward shared by tests (the compilation cache is keyed by cfg and shapes).
_jit_forward = jax.jit(_forward, static_argnums=0, static_argnames=("collect",))


def _max_diff(a, b) -> float:
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _hf_cfg(num_kv_heads: int, tie: bool, theta: float) -> ModelConfig:
  return ModelConfig(
    vocab_size=97,
    num_layers=3,
    d_model=64,
    num_heads=4,
    num_kv_heads=num_kv_heads,
    ffn_dim=176,
    rope_theta=theta,
    rms_eps=1e-6,
    init_std=0.1,
    tie_embeddings=tie,
  )


@pytest.mark.parametrize("num_kv_heads,tie", [(2, True), (2, False), (4, False)])
def test_hf_conversion_round_trips_exactly(num_kv_heads, tie):
  cfg = _hf_cfg(num_kv_heads, tie, 10_000.0)
  params = random_params(cfg, 5)
  back = hf.hf_state_dict_to_params(hf.params_to_hf_state_dict(params, cfg), cfg)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, params)

  rng = np.random.default_rng(0)
  sd = {
    k: rng.normal(size=v.shape).astype(np.float32) for k, v in hf.params_to_hf_state_dict(params, cfg).items()
  }
  if tie:
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
  sd_back = hf.params_to_hf_state_dict(hf.hf_state_dict_to_params(sd, cfg), cfg)
  assert sd_back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(sd_back[k], sd[k], err_msg=k)


def test_hf_conversion_rejects_mismatches():
  cfg = _hf_cfg(2, True, 10_000.0)
  sd = hf.params_to_hf_state_dict(random_params(cfg, 0), cfg)
  with pytest.raises(ValueError, match="lm_head"):  # tied config, untied weights
    hf.hf_state_dict_to_params({**sd, "lm_head.weight": sd["lm_head.weight"] + 1.0}, cfg)
  with pytest.raises(ValueError, match="q_proj.bias"):
    hf.hf_state_dict_to_params({**sd, "model.layers.0.self_attn.q_proj.bias": np.zeros(64)}, cfg)
  with pytest.raises(ValueError, match="k_proj.weight has shape"):
    hf.hf_state_dict_to_params(sd, replace(cfg, num_kv_heads=4))
  with pytest.raises(ValueError, match="topology"):
    hf.params_to_hf_state_dict({}, replace(cfg, topology="lime"))


def test_collect_rejects_unknown_and_unavailable():
  cfg = tiny_model_config()
  params = random_params(cfg, 0)
  tokens_BT = _tokens(cfg, 1, 4)
  with pytest.raises(ValueError, match="cannot collect"):
    _forward(cfg, params, tokens_BT, collect=("nope",))
  with pytest.raises(ValueError, match="attention_impl='explicit'"):
    _forward(cfg, params, tokens_BT, collect=("attn_probs",))


def test_unknown_remat_policy_is_refused_by_the_config_check():
  """The one check of remat_policy is config validation (the stack does not repeat it)."""
  from lime_jax import config as config_lib

  c = config_lib.default_config()
  c.model.remat_policy = "everything"
  with pytest.raises(
    ValueError,
    match=r"config.model.remat_policy='everything' is invalid: choose one of "
    r"'none', 'full', 'save_dots'",
  ):
    config_lib.validate(c)


def test_attend_impls_agree_with_explicit_mask():
  """Direct call with a padded, offset mask (the decoding path): both impls must honour it."""
  g = np.random.default_rng(0)
  B, T, S, N, R, H = 2, 3, 8, 4, 2, 8
  q_BTNH = jnp.asarray(g.standard_normal((B, T, N, H)), jnp.float32)
  k_BSRH = jnp.asarray(g.standard_normal((B, S, R, H)), jnp.float32)
  v_BSRH = jnp.asarray(g.standard_normal((B, S, R, H)), jnp.float32)
  q_pos_BT = jnp.broadcast_to(jnp.arange(T) + 2, (B, T))
  mask_B1TS = jnp.arange(S)[None, None, None, :] <= q_pos_BT[:, None, :, None]
  attend_jit = jax.jit(attend, static_argnums=3)
  out_xla, _ = attend_jit(q_BTNH, k_BSRH, v_BSRH, "xla", mask_B1TS)
  out_exp, probs_BNTS = attend_jit(q_BTNH, k_BSRH, v_BSRH, "explicit", mask_B1TS)
  assert _max_diff(out_xla, out_exp) <= 1e-5
  assert float(jnp.max(jnp.where(mask_B1TS, 0.0, probs_BNTS))) == 0.0


def test_attend_impls_agree_without_mask_when_fewer_queries_than_keys():
  """mask=None with T < S: the queries are the last T positions for every impl."""
  g = np.random.default_rng(1)
  B, T, S, N, R, H = 1, 3, 6, 4, 2, 8
  q_BTNH = jnp.asarray(g.standard_normal((B, T, N, H)), jnp.float32)
  k_BSRH = jnp.asarray(g.standard_normal((B, S, R, H)), jnp.float32)
  v_BSRH = jnp.asarray(g.standard_normal((B, S, R, H)), jnp.float32)
  out_xla, _ = attend(q_BTNH, k_BSRH, v_BSRH, "xla")
  out_exp, probs_BNTS = attend(q_BTNH, k_BSRH, v_BSRH, "explicit")
  assert _max_diff(out_xla, out_exp) <= 1e-5
  assert float(probs_BNTS[0, 0, 0, S - T]) > 0.0 and float(probs_BNTS[0, 0, 0, S - T + 1]) == 0.0


def test_explicit_attention_probs_are_causal_distributions():
  cfg = tiny_model_config(num_layers=2, num_kv_heads=2, attention_impl="explicit")
  params = random_params(cfg, 0)
  T = 9
  _, out = _jit_forward(cfg, params, _tokens(cfg, 2, T), collect=("attn_probs",))
  probs_LBNTS = out.collected["attn_probs"]
  assert probs_LBNTS.shape == (cfg.num_layers, 2, cfg.num_heads, T, T)
  assert probs_LBNTS.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(probs_LBNTS.sum(-1)), 1.0, atol=1e-6)
  future_TS = jnp.triu(jnp.ones((T, T), bool), k=1)
  assert float(jnp.max(jnp.where(future_TS, probs_LBNTS, 0.0))) == 0.0
  assert float(jnp.min(jnp.where(future_TS, 1.0, probs_LBNTS))) > 0.0


def test_cudnn_on_cpu_raises_clear_error():
  if jax.default_backend() == "gpu":
    pytest.skip("cudnn is available on this backend")
  cfg = tiny_model_config(attention_impl="cudnn")
  params = random_params(cfg, 0)
  with pytest.raises(ValueError, match="cudnn.*GPU"):
    _forward(cfg, params, _tokens(cfg, 1, 4))


def test_unknown_attention_impl_raises():
  cfg = tiny_model_config(attention_impl="flash")
  params = random_params(cfg, 0)
  with pytest.raises(ValueError, match="attention_impl"):
    _forward(cfg, params, _tokens(cfg, 1, 4))


@pytest.mark.parametrize("num_kv_heads,tie", [(4, True), (2, False)])
def test_random_params_match_init_layout(num_kv_heads, tie):
  """The tests' cheap `random_params` has exactly the tree, shapes and dtypes of `init_params`."""
  cfg = tiny_model_config(num_kv_heads=num_kv_heads, tie_embeddings=tie)
  expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  got = jax.eval_shape(lambda: random_params(cfg))
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), got) == jax.tree.map(
    lambda x: (x.shape, x.dtype), expected
  )


def test_unknown_topology_raises():
  cfg = tiny_model_config(topology="dense")
  with pytest.raises(ValueError, match="topology"):
    _forward(cfg, random_params(cfg), _tokens(cfg, 1, 4))


# ---------------------------------------------------------------------------- 8. config validation


def test_default_config_validates():
  config_lib.validate(config_lib.default_config())


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("model.d_model", 100, "model.d_model"),  # 100 % 8 heads
    ("model.num_kv_heads", 3, "model.num_kv_heads"),
    ("train.learning_rate", -1e-3, "train.learning_rate"),
    ("model.topology", "dense", "model.topology"),
    ("model.attention_impl", "flash", "model.attention_impl"),
  ],
)
def test_validate_names_the_bad_field(field, value, match):
  c = config_lib.default_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match.replace(".", r"\.")):
    config_lib.validate(c)
