"""Seq-VCR inside the model: the per-layer hook, the projection's gradient, config errors, pauses."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax.data import pipeline, tasks
from lime_jax.data.tokenizer import PAD_ID, PAUSE_ID
from lime_jax.losses import aligned_positions, seq_vcr_loss
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.train import loop as train_lib
from lime_jax.train import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
B, T, V = 6, 7, 24


def _config(**seq_vcr):
  c = config_lib.default_config()
  c.model.update(num_layers=3, d_model=16, num_heads=2, ffn_dim=32, vocab_size=V)
  c.model.seq_vcr.update(**{"enabled": True, "proj_dim": 8, **seq_vcr})
  return c


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


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("layers", (0,), "final block only"),
    ("layers", (3,), r"in \[-3, 2\]"),
    ("layers", (2, -1), "twice"),
    ("variant", "rows", "variant"),
    ("positions", "middle", "positions"),
    ("eta", 0.0, "eta"),
    ("proj_dim", -1, "proj_dim"),
    ("lambda2", -0.1, "lambda2"),
  ],
)
def test_config_errors_name_the_field(field, value, match):
  c = _config()
  if field == "layers" and value == (0,):
    c.model.topology = "lime"
  c.model.seq_vcr[field] = value
  with pytest.raises(ValueError, match=match) as err:
    config_lib.validate(c)
  assert "model.seq_vcr." in str(err.value)
  c = _config()
  c.train.batch_size = 1
  with pytest.raises(ValueError, match="train.batch_size"):
    config_lib.validate(c)


def test_pauses_share_one_embedding_row_and_carry_no_ce():
  c = config_lib.default_config()
  c.data.update(task="multiplication", num_pause=3)
  c.data.multiplication.num_digits = 2
  task = tasks.get_task(c.data, 0)
  for scope in ("answer", "all"):
    f = pipeline.encode_example(task.tokenizer, task.example("train", 0), 24, 3, scope)
    pauses = np.nonzero(f["inputs"] == PAUSE_ID)[0]
    assert len(pauses) == 3  # K copies of ONE token id: its embedding row is the shared pause embedding
    # No CE where the target is a pause token or </pause_start> / </pause_end>.
    assert np.all(f["loss_mask"][np.isin(f["targets"], (4, 5, 6))] == 0)
    assert np.all(f["loss_mask"][pauses] == 0)  # targets after a pause are pauses or </pause_end>


def _experiment(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "name,presets",
  [
    ("seqvcr_mult", ("default", "tiny", "4x4", "5x5")),
    ("seqvcr_arith", ("default", "tiny", "ops4", "ops5", "ops6")),
    ("seqvcr_lis", ("default", "tiny", "len50", "len80", "len100")),
  ],
)
def test_experiment_presets_and_arms_validate(name, presets, monkeypatch):
  monkeypatch.chdir(REPO)  # the official test file path is relative to the repository root
  module = _experiment(name)
  for preset in presets:
    for arm in ("vanilla", "pause", "seqvcr", "seqvcr_pause", "cot"):
      c = module.get_config(f"{preset},{arm}")
      config_lib.validate(c)
      assert c.model.seq_vcr.enabled == arm.startswith("seqvcr")
      assert (c.data.num_pause > 0) == arm.endswith("pause")
      assert c.data[c.data.task].cot == (arm == "cot")
      assert c.data.seq_len == 0  # fitted when the run is built
      need = pipeline.fit_seq_len(c)
      pipeline.check_fits(tasks.get_task(c.data, 0), c.data)
      c.data.seq_len = need - 1  # the fit is the smallest that fits
      with pytest.raises(ValueError, match="data.seq_len"):
        pipeline.check_fits(tasks.get_task(c.data, 0), c.data)
  assert set(module.SWEEPS) == {"lambdas", "proj_dim"}
  with pytest.raises(ValueError, match="Unknown arm"):
    module.get_config("default,nope")


def test_a_task_override_on_a_preset_refits_seq_len():
  """`--config.data.multiplication.num_digits=3` on a 2x2 preset: the run is built with the 3x3 length
  (the preset's seq_len is 0, fitted at build; config.json saves the fitted number)."""
  module = _experiment("seqvcr_mult")
  config = module.get_config("cpu_2x2,seqvcr_pause")
  config.data.multiplication.num_digits = 3
  task = tasks.get_task(config.data, 0)
  expected = pipeline.required_seq_len(task.tokenizer, task.longest_example(), int(config.data.num_pause))
  assert expected > pipeline.fit_seq_len(module.get_config("cpu_2x2,seqvcr_pause"))
  run = train_lib.build(config)
  assert run.config.data.seq_len == expected
  pipeline.check_fits(task, config.data)


def test_seq_len_zero_is_refused_for_text():
  config = config_lib.default_config()
  config.data.update(task="text", seq_len=0)
  with pytest.raises(ValueError, match=r"data.seq_len.*synthetic tasks"):
    config_lib.validate(config)
  config.data.update(task="arithmetic", seq_len=3)
  with pytest.raises(ValueError, match=r"data.seq_len.*at least 4 tokens, or 0"):
    config_lib.validate(config)
