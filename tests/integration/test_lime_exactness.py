"""LIMe (docs/methods.md §2) against its references, for every router, topology and remat policy: the
routing formulas, the memory-linear stack's gradients, decoding, collections and memory growth.

Two references. `unrolled_stack` writes the routing formulas of docs/methods.md §2.1 / §2.2 literally
(per router, no padding, no masks, no custom VJP): the forward pass of each router must give them.
`unrolled_stages` runs a stack's stages (`lime_stack.LayerFns`) as a plain Python loop over layers,
from the contract alone: every gradient test compares the memory-linear custom VJP against it, for
every registered router and every registered topology run on that stack (`Topology.stages`), so a new
router gets the check from its registry line. Also the router analysis and the traced layer's pullback.
(The fast checks: tests/unit/test_lime.py.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.analysis.router import router_analysis, save_router_analysis
from lime_jax.model import (
  LimeConfig,
  ModelConfig,
  Transformer,
  get_topology,
  init_cache,
  init_params,
  lime_mix,
  lime_stack,
  routers,
)
from lime_jax.model import lime as lime_mod
from lime_jax.model.block import Block
from lime_jax.model.lime import router_of
from lime_jax.model.model_config import DenseFormerConfig
from lime_jax.model.routers import kv as kv_router
from lime_jax.model.routers.v1 import top_p_keep, unit_rms
from lime_jax.model.tables import layer_tables
from tests.unit.test_lime import STACK_CASES, lime_cfg

ROUTERS = ("kv", "static", "top_p", "dynamic")
POLICIES = ("none", "full", "save_dots")


def lime_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """init_params, with the norm scales and the v1 norm scales perturbed so none is trivially 1."""
  params = init_params(cfg, jax.random.PRNGKey(seed))
  g = np.random.default_rng(seed)
  perturb = lambda x: x * jnp.asarray(1.0 + 0.3 * g.standard_normal(x.shape), x.dtype)
  params["layers"]["attn_norm"]["scale"] = perturb(params["layers"]["attn_norm"]["scale"])
  if "norm_scale_LD" in params["router"]:
    params["router"]["norm_scale_LD"] = perturb(params["router"]["norm_scale_LD"])
  if "w_LDRM" in params["router"]:  # the dynamic router's init (std 0.1 here) is near uniform: sharpen it
    params["router"]["w_LDRM"] = params["router"]["w_LDRM"] * 20.0
  return params


def run_stack(cfg: ModelConfig, params: dict, h_BTD: jax.Array, **kw):
  positions_BT = jnp.broadcast_to(jnp.arange(h_BTD.shape[1]), h_BTD.shape[:2])
  topo = get_topology(cfg.topology)
  return topo.run(cfg, params["layers"], params["router"], h_BTD, layer_tables(cfg, positions_BT), **kw)


def unrolled_stack(cfg: ModelConfig, params: dict, h_BTD: jax.Array) -> jax.Array:
  """The LIMe stack written literally: layer l >= 1 mixes every earlier layer with the unpadded
  W_l [R, (l+1)R] (kv) or softmax weights a_l [R, l+1] (v1) by explicit sums; layer 0 is plain."""
  L, R = cfg.num_layers, cfg.num_kv_heads
  positions_BT = jnp.broadcast_to(jnp.arange(h_BTD.shape[1]), h_BTD.shape[:2])
  router, lc = params["router"], cfg.lime
  block = Block(cfg)
  raws, normed = [], []
  for l in range(L):
    params_l = jax.tree.map(lambda x: x[l], params["layers"])
    kv_mixer = kv_input = None
    if lc.router == "kv" and l > 0:
      W_l = router["w_LRMR"][l, :, : l + 1, :].reshape(R, (l + 1) * R)

      def kv_mixer(raw_BTRC, W_l=W_l, l=l):
        sources = raws + [raw_BTRC]
        heads = []
        for r in range(R):
          terms = [W_l[r, m * R + h] * sources[m][:, :, h, :] for m in range(l + 1) for h in range(R)]
          heads.append(sum(terms))
        return jnp.stack(heads, axis=2)

    if lc.router != "kv":
      normed.append(unit_rms(h_BTD, cfg.rms_eps))
      if l > 0:
        scale_D = router["norm_scale_LD"][l]
        if lc.router == "dynamic":
          x_BTD = scale_D[None, None, :] * normed[l]
          logits_BTRM = jnp.einsum("btd,drm->btrm", x_BTD, router["w_LDRM"][l, :, :, : l + 1])
          a_BTRM = jax.nn.softmax(logits_BTRM, axis=-1)
        else:
          a_RM = jax.nn.softmax(router["w_LRM"][l, :, : l + 1], axis=-1)
          if lc.router == "top_p":
            keep_RM = jax.lax.stop_gradient(top_p_keep(a_RM, lc.top_p))
            a_RM = jnp.where(keep_RM, a_RM, 0.0) / jnp.sum(jnp.where(keep_RM, a_RM, 0.0), -1, keepdims=True)
          a_BTRM = jnp.broadcast_to(a_RM[None, None], (*h_BTD.shape[:2], *a_RM.shape))

        def kv_input(x_BTD, a_BTRM=a_BTRM, scale_D=scale_D, l=l):
          heads = [sum(a_BTRM[:, :, r, m, None] * normed[m] for m in range(l + 1)) for r in range(R)]
          return scale_D[None, None, None, :] * jnp.stack(heads, axis=2)

    h_BTD, extras = block.apply(
      {"params": params_l}, h_BTD, layer_tables(cfg, positions_BT), kv_mixer=kv_mixer, kv_input=kv_input
    )
    raws.append(extras["raw_kv"])
  return h_BTD


def max_rel_diff(a, b) -> float:
  """max |a - b| over all leaves, relative to max(1, max |b|)."""
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b))
  scale = max(jax.tree.leaves(jax.tree.map(lambda y: float(jnp.max(jnp.abs(y))), b)))
  return max(diffs) / max(1.0, scale)


def test_kv_router_is_the_literal_double_sum():
  """Layer l's mixed values = sum_{m<=l} sum_h W_l[r, m*R+h] v_{m,h} (numpy loops), from collections."""
  cfg = lime_cfg("kv", num_layers=4)
  params = lime_params(cfg)
  tokens_BT = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, cfg.vocab_size)
  _, out = Transformer(cfg).apply({"params": params}, tokens_BT, collect=("hidden", "value"))
  L, R, H = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  embed = np.asarray(params["embed"], np.float64)
  inputs = [embed[np.asarray(tokens_BT)]] + [np.asarray(h, np.float64) for h in out.collected["hidden"][:-1]]
  raw_v = []
  for m in range(L):
    x = inputs[m] / np.sqrt(np.mean(inputs[m] ** 2, -1, keepdims=True) + cfg.rms_eps)
    x = x * np.asarray(params["layers"]["attn_norm"]["scale"][m], np.float64)
    raw_v.append(np.einsum("btd,drc->btrc", x, np.asarray(params["layers"]["wkv"][m], np.float64))[..., H:])
  w = np.asarray(params["router"]["w_LRMR"], np.float64)
  for l in range(1, L):
    W_l = w[l, :, : l + 1, :].reshape(R, (l + 1) * R)
    expected = np.zeros_like(raw_v[0])
    for r in range(R):
      for m in range(l + 1):
        for h in range(R):
          expected[:, :, r] += W_l[r, m * R + h] * raw_v[m][:, :, h]
    np.testing.assert_allclose(np.asarray(out.collected["value"][l]), expected, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.collected["value"][0]), raw_v[0], atol=2e-5, rtol=1e-4)


def test_identity_init_equals_plain_model():
  cfg = lime_cfg("kv", lime=LimeConfig(router="kv", init="identity", block_size=2))
  params = lime_params(cfg)
  plain_cfg = dataclasses.replace(cfg, topology="plain")
  plain_params = {k: v for k, v in params.items() if k != "router"}
  tokens_BT = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 0, cfg.vocab_size)
  logits, _ = Transformer(cfg).apply({"params": params}, tokens_BT)
  plain_logits, _ = Transformer(plain_cfg).apply({"params": plain_params}, tokens_BT)
  assert float(jnp.max(jnp.abs(logits - plain_logits))) <= 1e-6


def test_paper_init():
  """Own-layer block = I_R; earlier entries U(+-sqrt(3/((l+1)R))), nonzero; later (padding) zero."""
  cfg = lime_cfg("kv", num_layers=6, num_kv_heads=4)
  w = np.asarray(init_params(cfg, jax.random.PRNGKey(0))["router"]["w_LRMR"])
  R = 4
  for l in range(1, 6):
    np.testing.assert_array_equal(w[l, :, l, :], np.eye(R))
    earlier = w[l, :, :l, :]
    assert np.all(np.abs(earlier) <= np.sqrt(3 / ((l + 1) * R))) and np.all(earlier != 0)
    assert np.all(w[l, :, l + 1 :, :] == 0)


@pytest.mark.parametrize("router", ROUTERS)
def test_causality_by_gradient(router):
  """The stack output at position t has zero gradient w.r.t. inputs after t (memory-linear path)."""
  cfg = lime_cfg(router)
  params = lime_params(cfg)
  h_BTD = jax.random.normal(jax.random.PRNGKey(3), (2, 8, cfg.d_model))
  t = 3
  grad_BTD = jax.grad(lambda h: jnp.sum(run_stack(cfg, params, h).h_BTD[:, t]))(h_BTD)
  assert float(jnp.max(jnp.abs(grad_BTD[:, t + 1 :]))) == 0.0
  assert float(jnp.min(jnp.max(jnp.abs(grad_BTD[:, : t + 1]), axis=(0, 2)))) > 0.0


def test_kv_effective_parameter_count():
  cfg = lime_cfg("kv", num_layers=6, num_kv_heads=2)
  L, R = 6, 2
  param_count = lambda c: router_of(c).param_count(c)
  assert param_count(cfg) == R * R * (L * (L + 1) // 2 - 1)
  assert (
    param_count(dataclasses.replace(cfg, num_layers=16, d_model=2048, num_heads=32, num_kv_heads=32))
    == 138_240
  )  # docs/methods.md §2.1, 1.2B
  params = lime_params(cfg)
  h_BTD = jax.random.normal(jax.random.PRNGKey(4), (2, 5, cfg.d_model))
  grads = jax.grad(lambda p: jnp.sum(jnp.sin(run_stack(cfg, p, h_BTD).h_BTD)))(params)
  assert int(jnp.sum(grads["router"]["w_LRMR"] != 0)) == param_count(cfg)


@pytest.mark.parametrize("router", ROUTERS)
def test_routers_compute_the_formulas_of_methods_md(router):
  """Each router's forward pass (the memory-linear stack) gives the literal formulas of
  docs/methods.md §2.1 / §2.2 (`unrolled_stack`); the gradients are checked against the stages
  themselves, for every registered router, by `test_stages_are_exact`."""
  cfg = lime_cfg(router)
  params = lime_params(cfg)
  h_BTD = jax.random.normal(jax.random.PRNGKey(5), (2, 6, cfg.d_model))
  got_BTD = jax.jit(lambda p, h: run_stack(cfg, p, h).h_BTD)(params, h_BTD)
  want_BTD = jax.jit(lambda p, h: unrolled_stack(cfg, p, h))(params, h_BTD)
  assert max_rel_diff(got_BTD, want_BTD) <= 1e-5


# --------------------------------------------------------------------- the stage contract (exactness)


def stack_cfg(topology: str, router: str | None, **overrides) -> ModelConfig:
  """`lime_cfg`'s model (5 layers, blocks of 2: three blocks, one partial) with `topology`."""
  base = dict(topology=topology, denseformer=DenseFormerConfig(block_size=2))
  if router is not None:
    base["lime"] = LimeConfig(router=router, block_size=2, top_p=0.6, static_init_std=1.0)
  return lime_cfg(**{**base, **overrides})


def stack_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """`lime_params`, with every topology parameter perturbed (DenseFormer's init is the identity)."""
  params = lime_params(cfg, seed)
  g = np.random.default_rng(seed + 1)
  params["router"] = jax.tree.map(
    lambda x: x + jnp.asarray(0.3 * g.standard_normal(x.shape), x.dtype), params["router"]
  )
  return params


def stages_of(cfg: ModelConfig) -> lime_stack.StackStages:
  return get_topology(cfg.topology).stages(cfg)


def unrolled_stages(fns: lime_stack.LayerFns, layers, router, h, tables) -> jax.Array:
  """The stages as a Python loop over layers, from the contract alone (`lime_stack.LayerFns`): a zero
  buffer [M, *slot] whose slot l layer l writes, prev from one `mix` over all M slots; differentiated
  by JAX itself (no custom VJP, no blocks, no grouped schedule, no static_coef)."""
  buf = jnp.zeros((fns.num_slots, *fns.entry_shape(batch=h.shape[0], seq=h.shape[1])), fns.dtype)
  for l in range(jax.tree.leaves(layers)[0].shape[0]):
    params_l, router_l = jax.tree.map(lambda x, l=l: x[l], (layers, router))
    l_ = jnp.asarray(l, jnp.int32)
    coef = fns.pre(router_l=router_l, h=h, l=l_)
    prev = fns.mix(coef_block=coef, buf_block=buf, start=0, l=l_)
    out = fns.post(
      params_l=params_l, router_l=router_l, coef=coef, prev=prev, h=h, tables=tables, l=l_, cache_l=None
    )
    buf = buf.at[l].set(out.entry.astype(buf.dtype))
    h = out.h
  return h


def assert_mix_is_static_coef(cfg: ModelConfig) -> None:
  """(a) With static coefficients, at every layer l: pre's coef is static_coef(router)[l], and mix (over
  the whole buffer, and block by block as the stack runs it) is einsum(static_coef[l], buffer) on a
  random buffer. Input-dependent coefficients (no static_coef): nothing to check here."""
  stages, params = stages_of(cfg), stack_params(cfg)
  fns = stages.layer_fns(cfg)
  if fns.static_coef is None:
    return
  router = stages.stacked(params["router"], cfg, fns.num_slots)
  coef_LRME = fns.static_coef(router=router)
  L, R, M, E = coef_LRME.shape
  assert (L, M) == (cfg.num_layers, fns.num_slots), coef_LRME.shape
  keys = jax.random.split(jax.random.PRNGKey(11), 2)
  B, T = 2, 3
  buf = jax.random.normal(keys[0], (M, *fns.entry_shape(batch=B, seq=T)), fns.dtype)
  h = stages.initial_state(jax.random.normal(keys[1], (B, T, cfg.d_model)))
  for l in range(L):
    router_l, l_ = jax.tree.map(lambda x, l=l: x[l], router), jnp.asarray(l, jnp.int32)
    coef = fns.pre(router_l=router_l, h=h, l=l_)
    np.testing.assert_array_equal(coef.reshape(R, M, E), coef_LRME[l], err_msg=f"pre != static_coef[{l}]")
    want_RX = jnp.einsum("rme,mex->rx", coef_LRME[l, :, :l], buf.reshape(M, E, -1)[:l])
    prev = fns.mix(coef_block=coef, buf_block=buf, start=0, l=l_)
    np.testing.assert_allclose(prev.reshape(R, -1), want_RX, rtol=1e-5, atol=1e-5, err_msg=f"mix, layer {l}")
    prev_blocks, _ = lime_mix.mix_forward(fns.block_mix, coef, buf, l_)
    np.testing.assert_allclose(
      prev_blocks.reshape(R, -1), want_RX, rtol=1e-5, atol=1e-5, err_msg=f"block mix, layer {l}"
    )


def assert_grads_match_unrolled(cfg: ModelConfig) -> None:
  """(b) Loss and gradients (layer and topology parameters, input) of the memory-linear stack
  (`lime_stack.lime_stack`, the topology's remat policy and schedule) equal those of `unrolled_stages`
  to 1e-5."""
  stages, params = stages_of(cfg), stack_params(cfg)
  fns = stages.layer_fns(cfg)
  h_BTD = jax.random.normal(jax.random.PRNGKey(5), (2, 6, cfg.d_model))
  tables = layer_tables(cfg, jnp.broadcast_to(jnp.arange(6), (2, 6)))
  probe = jax.random.normal(jax.random.PRNGKey(6), stages.initial_state(h_BTD).shape)

  def loss(stack_fn, params, h_BTD):
    router = stages.stacked(params["router"], cfg, fns.num_slots)
    return jnp.sum(stack_fn(fns, params["layers"], router, stages.initial_state(h_BTD), tables) * probe)

  grad_fn = lambda fn: jax.jit(jax.value_and_grad(functools.partial(loss, fn), (0, 1)))
  value, grads = grad_fn(lime_stack.lime_stack)(params, h_BTD)
  ref_value, ref_grads = grad_fn(unrolled_stages)(params, h_BTD)
  assert abs(float(value - ref_value)) <= 1e-5 * max(1.0, abs(float(ref_value))), (value, ref_value)
  assert max_rel_diff(grads, ref_grads) <= 1e-5, max_rel_diff(grads, ref_grads)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("topology,router", STACK_CASES)
def test_stages_are_exact(topology, router, policy):
  """Every registered router and every registered topology run on lime_stack, from its stages alone:
  (a) mix is the linear map static_coef gives (the backward pass pulls with the latter), (b) the custom
  VJP's gradients are the unrolled loop's."""
  cfg = stack_cfg(topology, router, remat_policy=policy)
  assert_mix_is_static_coef(cfg)
  assert_grads_match_unrolled(cfg)


class PermutedKvRouter(kv_router.KvRouter):
  """A toy inconsistent router: the kv router with its static_coef's source heads reversed, so it no
  longer describes what mix computes (the loss stays right, the pulled gradients go wrong)."""

  name = "permuted_kv"

  def layer_fns(self, cfg):
    fns = super().layer_fns(cfg)
    return dataclasses.replace(fns, static_coef=lambda *, router: fns.static_coef(router=router)[..., ::-1])


PERMUTED_KV = PermutedKvRouter()


def test_an_inconsistent_router_fails_the_exactness_check(monkeypatch):
  monkeypatch.setitem(routers.REGISTRY, "permuted_kv", f"{__name__}:PERMUTED_KV")
  cfg = stack_cfg("lime", "permuted_kv")
  assert router_of(cfg) is PERMUTED_KV
  with pytest.raises(AssertionError, match="static_coef"):
    assert_mix_is_static_coef(cfg)
  with pytest.raises(AssertionError):
    assert_grads_match_unrolled(cfg)


@pytest.mark.parametrize("policy", ("none", "full"))
def test_one_kv_head_static_router_gradients_equal_unrolled_reference(policy):
  """With one kv head a v1 static router's dprev slot is a buffer slot, so its backward pass keeps the
  cotangent stack in the buffer, as the kv router's does (with R > 1 it keeps a separate stack)."""
  assert_grads_match_unrolled(lime_cfg("static", num_kv_heads=1, remat_policy=policy))


@pytest.mark.parametrize(
  "layers,group,policy,keep_far",
  ((8, 4, "none", True), (8, 4, "full", True), (8, 4, "full", False), (12, 6, "full", True)),
)
def test_grouped_schedule_gradients_equal_unrolled_reference(layers, group, policy, keep_far):
  """The two-level schedule (far sources mixed per group of layers, lime_mix.far_forward / far_pull)
  gives the unrolled reference's loss and gradients, with and without recomputation of prev, and with
  the far parts kept from the forward pass or recomputed."""
  cfg = lime_cfg(
    "kv",
    num_layers=layers,
    remat_policy=policy,
    lime=LimeConfig(router="kv", block_size=2, group_size=group, keep_far=keep_far),
  )
  assert router_of(cfg).group_size(cfg) == group
  assert_grads_match_unrolled(cfg)


def test_nan_in_unused_router_slots_does_not_poison_gradients():
  cfg = lime_cfg("kv")
  params = lime_params(cfg)
  L = cfg.num_layers
  l_L1M1 = np.arange(L)[:, None, None, None]
  m_1L1M = np.arange(L)[None, None, :, None]
  unused = (m_1L1M > l_L1M1) | (l_L1M1 == 0)
  poisoned = jax.tree.map(lambda x: x, params)
  poisoned["router"]["w_LRMR"] = jnp.where(unused, jnp.nan, params["router"]["w_LRMR"])
  h_BTD = jax.random.normal(jax.random.PRNGKey(7), (2, 5, cfg.d_model))
  loss_fn = lambda p: jnp.sum(jnp.sin(run_stack(cfg, p, h_BTD).h_BTD))
  clean_loss, clean = jax.value_and_grad(loss_fn)(params)
  loss, grads = jax.value_and_grad(loss_fn)(poisoned)
  assert bool(jnp.isfinite(loss)) and float(loss) == float(clean_loss)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert max_rel_diff(grads, clean) == 0.0


@pytest.mark.parametrize("router", ("kv", "dynamic"))
def test_cached_decoding_equals_full_recomputation(router):
  cfg = lime_cfg(router)
  params = lime_params(cfg)
  model = Transformer(cfg)
  prompt_BT = jax.random.randint(jax.random.PRNGKey(8), (2, 5), 0, cfg.vocab_size)
  steps, B, P = 3, 2, 5
  cache = init_cache(cfg, B, P + steps)
  positions = lambda start, n: jnp.broadcast_to(jnp.arange(start, start + n), (B, n))
  logits, out = model.apply({"params": params}, prompt_BT, positions(0, P), cache=cache)
  full_logits, _ = model.apply({"params": params}, prompt_BT)
  np.testing.assert_allclose(logits, full_logits, atol=1e-5)
  tokens_BT, cache = prompt_BT, out.cache
  for i in range(steps):
    next_B1 = jnp.argmax(logits[:, -1], axis=-1)[:, None]
    tokens_BT = jnp.concatenate([tokens_BT, next_B1], axis=1)
    logits, out = model.apply({"params": params}, next_B1, positions(P + i, 1), cache=cache)
    cache = out.cache
    full_logits, _ = model.apply({"params": params}, tokens_BT)
    np.testing.assert_allclose(logits[:, -1], full_logits[:, -1], atol=1e-5)
  # Greedy tokens from the cache equal greedy tokens recomputed from scratch at every step.
  recomputed_BT = prompt_BT
  for _ in range(steps):
    full_logits, _ = model.apply({"params": params}, recomputed_BT)
    recomputed_BT = jnp.concatenate([recomputed_BT, jnp.argmax(full_logits[:, -1], -1)[:, None]], axis=1)
  np.testing.assert_array_equal(tokens_BT, recomputed_BT)


def test_collections_match_and_leave_logits_unchanged():
  cfg = lime_cfg("kv", attention_impl="explicit")
  params = lime_params(cfg)
  tokens_BT = jax.random.randint(jax.random.PRNGKey(9), (2, 6), 0, cfg.vocab_size)
  logits, _ = Transformer(cfg).apply({"params": params}, tokens_BT)
  logits_c, out = Transformer(cfg).apply(
    {"params": params}, tokens_BT, collect=("hidden", "value", "attn_probs")
  )
  np.testing.assert_allclose(logits_c, logits, atol=1e-6)
  L, B, T = cfg.num_layers, 2, 6
  assert out.collected["hidden"].shape == (L, B, T, cfg.d_model)
  assert out.collected["value"].shape == (L, B, T, cfg.num_kv_heads, cfg.head_dim)
  assert out.collected["attn_probs"].shape == (L, B, cfg.num_heads, T, T)
  np.testing.assert_allclose(jnp.sum(out.collected["attn_probs"], -1), 1.0, atol=1e-5)


def _jit_grad_temp_bytes(cfg: ModelConfig, loss: Callable, x: jax.ShapeDtypeStruct) -> int:
  """Temp bytes XLA allocates for jit(grad(loss)) at `cfg`'s parameter shapes and input `x` (compiled
  only)."""
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  return jax.jit(jax.grad(loss)).lower(params, x).compile().memory_analysis().temp_size_in_bytes


def _grad_temp_bytes(L: int, topology: str) -> int:
  """Temp bytes XLA allocates for jit(grad) of the stack at depth L."""
  cfg = lime_cfg(
    "kv",
    num_layers=L,
    d_model=32,
    num_heads=4,
    num_kv_heads=4,
    ffn_dim=32,
    topology=topology,
    lime=LimeConfig(block_size=4),
  )
  h_BTD = jax.ShapeDtypeStruct((4, 32, cfg.d_model), jnp.float32)
  return _jit_grad_temp_bytes(cfg, lambda p, h: jnp.sum(run_stack(cfg, p, h).h_BTD), h_BTD)


def test_memory_is_linear_in_depth():
  """Temp bytes of jit(grad) at L = 4, 8, 16 grow linearly: the second increment is ~2x the first
  (measured 1.9); a buffer saved per layer makes it ~4x (the plain scan: 2.9 at this size, see below)."""
  t4, t8, t16 = (_grad_temp_bytes(L, "lime") for L in (4, 8, 16))
  assert (t16 - t8) / (t8 - t4) < 2.3, (t4, t8, t16)


def _model_temp_bytes(cfg: ModelConfig) -> int:
  """Temp bytes of jit(grad) of the whole model (the baseline has no LIMe stack to run alone)."""
  loss = lambda p, t: jnp.mean(Transformer(cfg).apply({"params": p}, t)[0] ** 2)
  return _jit_grad_temp_bytes(cfg, loss, jax.ShapeDtypeStruct((4, 64), jnp.int32))


def _sixteen_layers(policy: str, **lime) -> ModelConfig:
  return ModelConfig(
    vocab_size=64,
    num_layers=16,
    d_model=64,
    num_heads=4,
    num_kv_heads=4,
    ffn_dim=128,
    remat_policy=policy,
    lime=LimeConfig(block_size=4, **lime),
  )


@pytest.mark.parametrize("group,policy", ((1, "none"), (4, "full")))
def test_cotangent_stack_is_the_buffer(group, policy):
  """The kv router's backward pass writes dprev_l over buffer slot l (lime_stack._pull_bwd), so LIMe's
  temp bytes over the baseline's stay below 1.8 buffers at L = 16 (measured 1.25 with G = 1 and none,
  1.64 with G = 4 and full remat without kept far parts, whose two G-slot arrays add half a buffer); a
  separate cotangent stack measured 2.25 and 2.14 (one buffer more)."""
  base = _sixteen_layers(policy, group_size=group, keep_far=False)
  lime = dataclasses.replace(base, topology="lime")
  assert router_of(lime).group_size(lime) == group
  overhead = (_model_temp_bytes(lime) - _model_temp_bytes(base)) / lime_mod.buffer_bytes(lime, 4, 64)
  assert 1.0 <= overhead < 1.8, overhead


def test_kept_far_parts_cost_their_slots():
  """With remat and groups (G = 4 of L = 16), `lime.keep_far` keeps L - G far parts and drops the
  G-slot array that held the recomputed ones: L - 2G slots more, to within 2% of a slot."""
  cfg = dataclasses.replace(_sixteen_layers("full", group_size=4), topology="lime")
  recomputed = dataclasses.replace(cfg, lime=dataclasses.replace(cfg.lime, keep_far=False))
  slot = lime_mod.buffer_bytes(cfg, 4, 64) / 16
  extra_slots = (_model_temp_bytes(cfg) - _model_temp_bytes(recomputed)) / slot
  assert abs(extra_slots - (16 - 2 * 4)) < 0.02, extra_slots


def test_remat_reads_the_entry_instead_of_recomputing_it():
  """With full remat, the kv router's layer takes its raw k/v from the buffer slot (LayerFns.entry,
  routers.kv._stored), so one layer's backward pass costs exactly one kv projection (2*B*T*D*2RH FLOPs by
  XLA's count) less than with the projection recomputed (entry=None), with the same gradients."""
  cfg = lime_cfg("kv", remat_policy="full")
  params, l, (B, T) = lime_params(cfg), 3, (2, 8)
  keys = jax.random.split(jax.random.PRNGKey(5), 4)
  fns = router_of(cfg).layer_fns(cfg)
  h_BTD = jax.random.normal(keys[0], (B, T, cfg.d_model))
  buf = jax.random.normal(keys[1], fns.new_buffer(B, T).shape)
  dh_BTD = jax.random.normal(keys[2], h_BTD.shape)
  dentry = jax.random.normal(keys[3], fns.entry_shape(batch=B, seq=T))
  positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  router = router_of(cfg).stacked(params["router"], cfg, fns.num_slots)
  params_l, router_l = jax.tree.map(lambda x: x[l], (params["layers"], router))

  def backward(fns):
    tables = layer_tables(cfg, positions_BT)
    out = jax.jit(lime_stack.layer_step(fns))(tables, h_BTD, buf, params_l, router_l, l)
    pull = jax.jit(lambda pullback, dh, de: pullback((dh, de)))
    cost = pull.lower(out.pullback, dh_BTD, dentry).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"], pull(out.pullback, dh_BTD, dentry)

  flops_read, grads_read = backward(fns)
  flops_recomputed, grads_recomputed = backward(dataclasses.replace(fns, entry=None))
  R, H = cfg.num_kv_heads, cfg.head_dim
  assert flops_recomputed - flops_read == 2 * B * T * cfg.d_model * 2 * R * H, (flops_recomputed, flops_read)
  assert max_rel_diff(grads_read, grads_recomputed) < 1e-6


def test_save_dots_does_not_stack_the_entry_again(monkeypatch):
  """remat_policy='save_dots' saves matmul outputs, the kv projection's among them: a second copy of
  every buffer slot. With the entry an input of the layer (LayerFns.entry) there is no such matmul
  output to save, and jit(grad) at 16 layers needs at least one buffer less (measured 14.3 -> 12.0 MiB,
  buffer 2 MiB)."""
  cfg = dataclasses.replace(_sixteen_layers("save_dots"), topology="lime")
  read = _model_temp_bytes(cfg)
  router = router_of(cfg)
  layer_fns = router.layer_fns
  monkeypatch.setattr(router, "layer_fns", lambda c: dataclasses.replace(layer_fns(c), entry=None))
  recomputed = _model_temp_bytes(cfg)
  assert recomputed - read >= lime_mod.buffer_bytes(cfg, 4, 64), (recomputed, read)


@pytest.mark.slow
def test_plain_scan_memory_grows_faster():
  """The check above can see quadratic growth: the plain-scan LIMe (buffer in the carry) fails it."""
  s4, s8, s16 = (_grad_temp_bytes(L, "lime_scan") for L in (4, 8, 16))
  assert (s16 - s8) / (s8 - s4) > 2.6, (s4, s8, s16)


@pytest.mark.parametrize("router", ("kv", "top_p", "dynamic"))
def test_router_analysis(router, tmp_path):
  cfg = lime_cfg(router)
  params = lime_params(cfg)
  tokens_BT = jax.random.randint(jax.random.PRNGKey(10), (2, 6), 0, cfg.vocab_size)
  analysis = router_analysis(params, cfg, tokens_BT)
  L, R = cfg.num_layers, cfg.num_kv_heads
  width = (lambda l: (l + 1) * R) if router == "kv" else (lambda l: l + 1)
  assert [np.shape(m) for m in analysis["matrices"]] == [(R, width(l)) for l in range(L)]
  share = np.asarray(analysis["source_share"])
  np.testing.assert_allclose(share.sum(axis=1), 1.0, atol=1e-5)
  assert np.all(np.triu(share, k=1) == 0) and share[0, 0] == pytest.approx(1.0)
  assert np.shape(analysis["self_retrieval_per_head"]) == (L, R)
  if router == "kv":
    w_2 = np.asarray(params["router"]["w_LRMR"][2, :, :3]).reshape(R, 3 * R)
    np.testing.assert_allclose(analysis["matrices"][2], w_2)
  if router == "top_p":
    assert 0.0 < analysis["pruned_fraction"] < 1.0
  paths = save_router_analysis(analysis, str(tmp_path))
  assert {p.rsplit("/", 1)[1] for p in paths} >= {"router.json", "router_source_share.png"}


@pytest.mark.parametrize("router", ["kv", "static"])
def test_the_pullback_reads_the_shared_tables_as_given(router):
  """The RoPE tables come in once (lime_jax/model/tables.py) and the traced layer's pullback reads those
  very inputs (known), so neither the stack (saved) nor the dependency walk (invariant) holds a copy of
  them: no pullback leaf of the tables' shape [B, T, 1, H] is left outside the known values (a Block
  that built its tables from the positions had four invariant ones here)."""
  cfg = lime_cfg(router, remat_policy="none")
  params, (B, T) = lime_params(cfg), (2, 8)
  fns = router_of(cfg).layer_fns(cfg)
  h_BTD = jax.random.normal(jax.random.PRNGKey(0), (B, T, cfg.d_model))
  router_stacked = router_of(cfg).stacked(params["router"], cfg, fns.num_slots)
  tables = layer_tables(cfg, jnp.broadcast_to(jnp.arange(T), (B, T)))
  traced = lime_stack.traced_layer(fns, params["layers"], router_stacked, h_BTD, fns.new_buffer(B, T), tables)
  used = traced.layout.known_used().shared
  assert used.cos_BT1H and used.sin_BT1H and not used.positions_BT
  out = traced.run(
    tables, h_BTD, fns.new_buffer(B, T), *jax.tree.map(lambda x: x[0], (params["layers"], router_stacked)), 0
  )
  table_shape = (B, T, 1, cfg.head_dim)
  not_known = traced.layout.saved_leaves(out.pullback) + list(traced.invariant)
  assert table_shape not in [tuple(x.shape) for x in not_known]
