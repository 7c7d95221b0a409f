"""The Seq-VCR term in the model: the hook in the layer scan equals the loss on collected layers (aligned
and answer positions), regularisation is off for eval and decoding, the projection is trained only by
it, and the LIMe topology regularises the stack output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax.data.tokenizer import PAD_ID
from lime_jax.losses import aligned_positions, seq_vcr_loss
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.train import step as step_lib
from tests.unit.test_seq_vcr_model import _config

B, T, V = 6, 7, 24


def _model(c):
  config_lib.validate(c)
  cfg = ModelConfig.from_config(c.model)
  return cfg, Transformer(cfg), init_params(cfg, jax.random.key(0))


def _tokens(pad_from: int | None = None):
  tokens = np.array(jax.random.randint(jax.random.key(1), (B, T), 1, V))
  if pad_from is not None:
    tokens[0, pad_from:] = PAD_ID  # one short example
  return jnp.asarray(tokens)


def _reference_aux(model, params, cfg, tokens, mask, answer_mask=None):
  """Seq-VCR terms from the collected hidden states (independent of the hook and its lax.cond)."""
  _, out = model.apply({"params": params}, tokens, collect=("hidden",))
  blocks = [l % cfg.num_layers for l in cfg.seq_vcr.layers]
  variance = covariance = 0.0
  for k, l in enumerate(blocks):
    z = out.collected["hidden"][l]
    if cfg.seq_vcr.proj_dim:
      z = z @ params["seq_vcr_proj"][k]
    terms = seq_vcr_loss(
      z,
      mask,
      lambda1=cfg.seq_vcr.lambda1,
      lambda2=cfg.seq_vcr.lambda2,
      eta=cfg.seq_vcr.eta,
      variant=cfg.seq_vcr.variant,
    )
    variance, covariance = variance + terms["variance"], covariance + terms["covariance"]
  return variance, covariance


@pytest.mark.parametrize(
  "layers,proj_dim,variant",
  [((-1,), 8, "per_position"), ((0, 2), 8, "per_position"), ((1,), 0, "batch_length")],
)
def test_hook_in_scan_equals_loss_on_collected_layers(layers, proj_dim, variant):
  c = _config(layers=layers, proj_dim=proj_dim, variant=variant)
  cfg, model, params = _model(c)
  assert ("seq_vcr_proj" in params) == bool(proj_dim)
  if proj_dim:
    assert params["seq_vcr_proj"].shape == (len(layers), 16, proj_dim)
  tokens = _tokens(pad_from=4)
  _, out = model.apply({"params": params}, tokens, regularize=True)
  real = (np.asarray(tokens) != PAD_ID).astype(np.float32)
  mask = aligned_positions(real) if variant == "per_position" else real
  variance, covariance = _reference_aux(model, params, cfg, tokens, mask)
  np.testing.assert_allclose(out.aux["seq_vcr_variance"], variance, rtol=1e-5)
  np.testing.assert_allclose(out.aux["seq_vcr_covariance"], covariance, rtol=1e-5, atol=1e-9)
  assert float(out.aux["seq_vcr_variance"]) > 0


def _batch(tokens):
  rng = np.random.default_rng(0)
  return {
    "inputs": tokens,
    "targets": jnp.asarray(rng.integers(1, V, (B, T))),
    "loss_mask": jnp.ones((B, T)),
    "answer_mask": jnp.ones((B, T)),
  }


def test_projection_is_trained_only_by_the_seq_vcr_term():
  _, model, params = _model(_config(layers=(0, -1)))
  batch = _batch(_tokens())
  (loss, stats), grads = jax.value_and_grad(step_lib.loss_fn, has_aux=True)(params, model, batch)
  # loss_fn logs CE and both terms separately; the loss is their sum.
  np.testing.assert_allclose(
    loss, stats["ce"] + stats["aux/seq_vcr_variance"] + stats["aux/seq_vcr_covariance"], rtol=1e-6
  )

  def ce_only(p):
    logits, _ = model.apply({"params": p}, batch["inputs"])
    return step_lib.token_metrics.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])

  def seq_vcr_only(p):
    _, out = model.apply({"params": p}, batch["inputs"], regularize=True)
    return out.aux["seq_vcr_variance"] + out.aux["seq_vcr_covariance"]

  g_ce = jax.grad(ce_only)(params)
  g_sv = jax.grad(seq_vcr_only)(params)
  assert float(jnp.max(jnp.abs(g_ce["seq_vcr_proj"]))) == 0.0  # exactly zero, not small
  assert float(jnp.max(jnp.abs(g_sv["seq_vcr_proj"]))) > 0.0
  np.testing.assert_allclose(grads["seq_vcr_proj"], g_sv["seq_vcr_proj"], rtol=1e-5, atol=1e-10)
  # ... and the Seq-VCR term does reach the backbone it regularises.
  assert float(jnp.max(jnp.abs(g_sv["layers"]["wq"]))) > 0.0


def test_lime_topology_regularises_the_stack_output():
  c = _config()
  c.model.topology = "lime"
  cfg, model, params = _model(c)
  tokens = _tokens()
  _, out = model.apply({"params": params}, tokens, regularize=True)
  variance, covariance = _reference_aux(model, params, cfg, tokens, None)
  np.testing.assert_allclose(out.aux["seq_vcr_variance"], variance, rtol=1e-5)
  np.testing.assert_allclose(out.aux["seq_vcr_covariance"], covariance, rtol=1e-5, atol=1e-9)
  # Gradients flow through the custom-VJP stack into the layers.
  g = jax.grad(lambda p: model.apply({"params": p}, tokens, regularize=True)[1].aux["seq_vcr_variance"])(
    params
  )
  assert float(jnp.max(jnp.abs(g["layers"]["wq"]))) > 0.0


B, T, V = 6, 7, 24


def test_aligned_positions_skip_padding_and_answer_positions_use_answer_mask():
  cfg, model, params = _model(_config(positions="answer"))
  tokens = _tokens(pad_from=4)
  answer_BT = np.zeros((B, T), np.float32)
  answer_BT[:, 3:6] = 1
  answer_BT[1, 3] = 0  # position 3 is not an answer position of every example
  _, out = model.apply({"params": params}, tokens, regularize=True, answer_mask_BT=answer_BT)
  expected_T = np.array([0, 0, 0, 0, 1, 1, 0], np.float32)
  np.testing.assert_array_equal(aligned_positions(answer_BT), expected_T)
  variance, _ = _reference_aux(model, params, cfg, tokens, expected_T)
  np.testing.assert_allclose(out.aux["seq_vcr_variance"], variance, rtol=1e-5)
  with pytest.raises(ValueError, match="answer_mask"):
    model.apply({"params": params}, tokens, regularize=True)


def test_regularize_off_for_eval_and_decoding_and_logits_unchanged():
  _, model, params = _model(_config())
  tokens = _tokens()
  logits_on, out_on = model.apply({"params": params}, tokens, regularize=True)
  logits_off, out_off = model.apply({"params": params}, tokens)
  assert set(out_on.aux) == {"seq_vcr_variance", "seq_vcr_covariance"} and out_off.aux == {}
  np.testing.assert_array_equal(logits_on, logits_off)
