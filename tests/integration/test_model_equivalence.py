"""The backbone's equivalent paths: causality, scan vs loop, remat policies and their memory, attention
implementations, KV-cached decoding vs the full forward, jit vs eager, bf16 vs fp32."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import init_cache, init_params
from lime_jax.model.block import Block
from lime_jax.model.layers import RMSNorm
from lime_jax.model.model_config import ModelConfig
from lime_jax.model.tables import layer_tables
from tests.conftest import random_params, replace, tiny_model_config
from tests.unit.test_model import _forward, _jit_forward, _max_diff, _tokens

# Jitted forward shared by tests (the compilation cache is keyed by cfg and shapes).


def _assert_trees_close(a, b, atol: float, rtol: float = 0.0) -> None:
  leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path)
    )


# ------------------------------------------------------------------------------------ 2. causality


@pytest.mark.parametrize("impl,num_kv_heads", [("xla", 4), ("xla", 2), ("explicit", 2)])
def test_causality_by_gradient(impl, num_kv_heads):
  """d loss_t / d embedding(token_s) is exactly 0 for s > t and nonzero for s <= t.

  Tokens are distinct, so row tokens[s] of the (untied) embedding is the input at position s only.
  """
  cfg = tiny_model_config(num_layers=2, num_kv_heads=num_kv_heads, tie_embeddings=False, attention_impl=impl)
  T = 10
  params = random_params(cfg, 0)
  tokens_T = jnp.asarray(np.random.default_rng(1).permutation(cfg.vocab_size)[:T], jnp.int32)
  targets_T = _tokens(cfg, 1, T, seed=2)[0]

  def losses_T(embed_VD):
    logits_1TV, _ = _forward(cfg, {**params, "embed": embed_VD}, tokens_T[None])
    logp_TV = jax.nn.log_softmax(logits_1TV[0])
    return -jnp.take_along_axis(logp_TV, targets_T[:, None], axis=-1)[:, 0]

  jac_TVD = jax.jit(jax.jacrev(losses_T))(params["embed"])
  grad_norm_TS = jnp.linalg.norm(jac_TVD[:, tokens_T], axis=-1)  # [t, s]
  future_TS = jnp.triu(jnp.ones((T, T), bool), k=1)
  assert float(jnp.max(jnp.where(future_TS, grad_norm_TS, 0.0))) == 0.0
  assert float(jnp.min(jnp.where(future_TS, jnp.inf, grad_norm_TS))) > 1e-6


# ---------------------------------------------------------------------------- 3. scan vs a loop


def _unrolled_forward(cfg: ModelConfig, params: dict, tokens_BT: jax.Array):
  """Reference: a Python loop calling Block on each layer's slice of the stacked parameters."""
  positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
  h_BTD = jnp.take(params["embed"], tokens_BT, axis=0)
  hidden, value = [], []
  for l in range(cfg.num_layers):
    params_l = jax.tree.map(lambda x, l=l: x[l], params["layers"])
    # Values written out from the parameters, not read back from the Block under test.
    x_BTD = RMSNorm(cfg.rms_eps).apply({"params": params_l["attn_norm"]}, h_BTD)
    value.append(jnp.einsum("btd,drh->btrh", x_BTD, params_l["wkv"][..., cfg.head_dim :]))
    h_BTD, _ = Block(cfg).apply({"params": params_l}, h_BTD, layer_tables(cfg, positions_BT))
    hidden.append(h_BTD)
  h_BTD = RMSNorm(cfg.rms_eps).apply({"params": params["final_norm"]}, h_BTD)
  unembed_DV = params["embed"].T if cfg.tie_embeddings else params["unembed"]
  logits_BTV = jnp.einsum("btd,dv->btv", h_BTD, unembed_DV)
  return logits_BTV, {"hidden": jnp.stack(hidden), "value": jnp.stack(value)}


@pytest.mark.parametrize("tie", [pytest.param(True, marks=pytest.mark.slow), False])
def test_scanned_stack_equals_unrolled_loop(tie):
  cfg = tiny_model_config(num_layers=3, num_kv_heads=2, tie_embeddings=tie)
  params = random_params(cfg, 0)
  tokens_BT = _tokens(cfg, 2, 12)
  logits_BTV, out = _jit_forward(cfg, params, tokens_BT, collect=("hidden", "value"))
  ref_logits_BTV, ref = jax.jit(lambda p, t: _unrolled_forward(cfg, p, t))(params, tokens_BT)
  L, B, T, R, H = cfg.num_layers, 2, 12, cfg.num_kv_heads, cfg.head_dim
  assert out.collected["hidden"].shape == (L, B, T, cfg.d_model)
  assert out.collected["value"].shape == (L, B, T, R, H)
  assert _max_diff(logits_BTV, ref_logits_BTV) <= 1e-5
  assert _max_diff(out.collected["hidden"], ref["hidden"]) <= 1e-5
  assert _max_diff(out.collected["value"], ref["value"]) <= 1e-5
  assert _max_diff(out.h_BTD, ref["hidden"][-1]) <= 1e-5
  # The layers really differ (a scan that reused layer 0's params would still be self-consistent).
  assert _max_diff(ref["hidden"][0], ref["hidden"][1]) > 1e-2


# --------------------------------------------------------------------------------------- 4. remat


def _loss_fn(cfg: ModelConfig):
  def loss(params, tokens_BT):
    logits_BTV, _ = _forward(cfg, params, tokens_BT[:, :-1])
    logp_BTV = jax.nn.log_softmax(logits_BTV)
    return -jnp.mean(jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1))

  return loss


def test_remat_policies_agree():
  base = tiny_model_config(num_layers=2, num_kv_heads=2)
  params = random_params(base, 0)
  tokens_BT = _tokens(base, 2, 9)
  results = {}
  for policy in ("none", "full", "save_dots"):
    cfg = replace(base, remat_policy=policy)
    results[policy] = jax.jit(jax.value_and_grad(_loss_fn(cfg)))(params, tokens_BT)
  for a, b in itertools.combinations(results, 2):
    (loss_a, grads_a), (loss_b, grads_b) = results[a], results[b]
    assert abs(float(loss_a) - float(loss_b)) <= 1e-5, (a, b)
    _assert_trees_close(grads_a, grads_b, atol=1e-5)
  assert float(_global_norm(results["none"][1])) > 1e-3


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_remat_full_reduces_temp_memory():
  base = ModelConfig(vocab_size=128, num_layers=4, d_model=128, num_heads=4, num_kv_heads=4, ffn_dim=512)
  params = jax.eval_shape(lambda: init_params(base, jax.random.key(0)))
  tokens_BT = jax.ShapeDtypeStruct((4, 129), jnp.int32)
  temp = {}
  for policy in ("none", "full"):
    grad_fn = jax.jit(jax.grad(_loss_fn(replace(base, remat_policy=policy))))
    temp[policy] = grad_fn.lower(params, tokens_BT).compile().memory_analysis().temp_size_in_bytes
  assert temp["full"] < 0.6 * temp["none"], temp


# ----------------------------------------------------------------------------------- 5. attention


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_attention_impls_agree(num_kv_heads):
  cfg = tiny_model_config(num_kv_heads=num_kv_heads)
  params = random_params(cfg, 0)
  tokens_BT = _tokens(cfg, 2, 13)
  logits = {
    impl: _jit_forward(replace(cfg, attention_impl=impl), params, tokens_BT)[0]
    for impl in ("xla", "explicit")
  }
  assert _max_diff(logits["xla"], logits["explicit"]) <= 1e-5


# ------------------------------------------------------------------------------- 6. cached decoding


@pytest.mark.parametrize("impl,num_kv_heads", [("xla", 2), ("explicit", 4)])
def test_cached_decoding_matches_full_forward(impl, num_kv_heads):
  cfg = tiny_model_config(num_layers=2, num_kv_heads=num_kv_heads, attention_impl=impl)
  params = random_params(cfg, 0)
  B, T, P, S = 2, 11, 5, 16
  tokens_BT = _tokens(cfg, B, T)
  full_BTV, _ = _jit_forward(cfg, params, tokens_BT)

  step = lambda p, t, pos, c: _jit_forward(cfg, p, t, positions_BT=pos, cache=c)
  cache = init_cache(cfg, B, S)
  prefill_BPV, out = step(params, tokens_BT[:, :P], jnp.broadcast_to(jnp.arange(P), (B, P)), cache)
  assert _max_diff(prefill_BPV, full_BTV[:, :P]) <= 1e-5
  cache = out.cache
  for t in range(P, T):
    logits_B1V, out = step(params, tokens_BT[:, t : t + 1], jnp.full((B, 1), t), cache)
    cache = out.cache
    assert _max_diff(logits_B1V[:, 0], full_BTV[:, t]) <= 1e-5, t
  np.testing.assert_array_equal(np.asarray(cache["index"]), T)
  assert cache["k"].shape == (cfg.num_layers, B, S, num_kv_heads, cfg.head_dim)
  assert float(jnp.max(jnp.abs(cache["k"][:, :, T:]))) == 0.0  # nothing written past the end


def test_greedy_generation_with_cache_equals_recomputation():
  cfg = tiny_model_config(num_layers=2, num_kv_heads=2)
  params = random_params(cfg, 1)
  B, P, G = 3, 4, 8
  prompt_BP = _tokens(cfg, B, P, seed=3)

  # Full recomputation on a fixed-length buffer: causality makes the (zero) tail irrelevant.
  full = lambda p, t: _jit_forward(cfg, p, t)[0]
  seq_BT = jnp.zeros((B, P + G), jnp.int32).at[:, :P].set(prompt_BP)
  for t in range(P, P + G):
    seq_BT = seq_BT.at[:, t].set(jnp.argmax(full(params, seq_BT)[:, t - 1], axis=-1))

  step = lambda p, t, pos, c: _jit_forward(cfg, p, t, positions_BT=pos, cache=c)
  logits_BPV, out = step(
    params, prompt_BP, jnp.broadcast_to(jnp.arange(P), (B, P)), init_cache(cfg, B, P + G)
  )
  next_B = jnp.argmax(logits_BPV[:, -1], axis=-1)
  generated = [next_B]
  for t in range(P, P + G - 1):
    logits_B1V, out = step(params, next_B[:, None], jnp.full((B, 1), t), out.cache)
    next_B = jnp.argmax(logits_B1V[:, 0], axis=-1)
    generated.append(next_B)
  np.testing.assert_array_equal(np.stack(generated, axis=1), np.asarray(seq_BT[:, P:]))
  assert len(np.unique(np.asarray(seq_BT[:, P:]))) > 1, "degenerate generation tests nothing"


# ------------------------------------------------------------------------- 7. shapes and dtypes


def test_shapes_and_finiteness_with_and_without_jit():
  cfg = tiny_model_config(num_kv_heads=2, tie_embeddings=False)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  tokens_BT = _tokens(cfg, 3, 7)
  eager_BTV, out = _forward(cfg, params, tokens_BT)
  jitted_BTV, jit_out = _jit_forward(cfg, params, tokens_BT)
  for logits_BTV, o in ((eager_BTV, out), (jitted_BTV, jit_out)):
    assert logits_BTV.shape == (3, 7, cfg.vocab_size)
    assert logits_BTV.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits_BTV)))
    assert o.h_BTD.shape == (3, 7, cfg.d_model)
    assert o.cache is None and o.collected == {} and o.aux == {}
  assert _max_diff(eager_BTV, jitted_BTV) <= 1e-5

  shapes = jax.tree.map(jnp.shape, params)
  L, D, N, R, H, F, V = 2, 32, 4, 2, 8, 64, cfg.vocab_size
  assert shapes == {
    "embed": (V, D),
    "unembed": (D, V),
    "final_norm": {"scale": (D,)},
    "layers": {
      "attn_norm": {"scale": (L, D)},
      "mlp_norm": {"scale": (L, D)},
      "wq": (L, D, N, H),
      "wkv": (L, D, R, 2 * H),
      "wo": (L, N, H, D),
      "mlp": {"w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D)},
    },
  }
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # Init (docs/methods.md §1): matrices ~ N(0, init_std), norm scales 1, an independent draw per layer.
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      np.testing.assert_array_equal(np.asarray(x), 1.0, err_msg=name)
    else:
      assert abs(float(jnp.std(x)) / cfg.init_std - 1.0) < 0.1, name
      assert abs(float(jnp.mean(x))) < 0.1 * cfg.init_std, name
  assert _max_diff(params["layers"]["wq"][0], params["layers"]["wq"][1]) > cfg.init_std


@pytest.mark.slow
def test_disable_jit_matches_jit():
  """Op-by-op execution (the scan runs as a Python loop) gives the compiled result."""
  cfg = tiny_model_config(num_kv_heads=2)
  params = random_params(cfg, 0)
  tokens_BT = _tokens(cfg, 2, 5)
  jitted_BTV, _ = _jit_forward(cfg, params, tokens_BT)
  with jax.disable_jit():
    nojit_BTV, _ = _forward(cfg, params, tokens_BT)
  assert bool(jnp.all(jnp.isfinite(nojit_BTV)))
  assert _max_diff(jitted_BTV, nojit_BTV) <= 1e-5


def test_bf16_compute_is_finite_fp32_and_close():
  cfg = tiny_model_config(num_layers=2, num_kv_heads=2)
  params = random_params(cfg, 0)
  tokens_BT = _tokens(cfg, 2, 16)
  fp32_BTV, _ = _jit_forward(cfg, params, tokens_BT)
  for impl in ("xla", "explicit"):
    bf16_BTV, out = _jit_forward(
      replace(cfg, compute_dtype="bfloat16", attention_impl=impl), params, tokens_BT
    )
    assert bf16_BTV.dtype == jnp.float32
    assert out.h_BTD.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(bf16_BTV)))
    diff = _max_diff(bf16_BTV, fp32_BTV)
    assert 0.0 < diff <= 0.05 * float(jnp.max(jnp.abs(fp32_BTV))), (impl, diff)
