"""Backbone options of the pretrained families: sliding windows in every attention path, validation,
FLOPs and the checkpoint signature, and what the export cannot express."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import hf
from lime_jax.model.model_config import ModelConfig

V, T, B = 96, 40, 2


def test_export_refuses_what_hf_cannot_express():
  cfg = ModelConfig(vocab_size=V, num_layers=2, d_model=64, num_heads=4)
  with pytest.raises(ValueError, match="topology"):
    hf.hf_config_for(dataclasses.replace(cfg, topology="lime"))
  with pytest.raises(ValueError, match="config.model.qk_norm"):  # Gemma 1 has no q/k norms
    hf.hf_config_for(dataclasses.replace(cfg, norm_offset=1.0, embed_scale=True, qk_norm=True))
  gemma2 = dataclasses.replace(
    cfg, norm_offset=1.0, embed_scale=True, post_norms=True, mlp_activation="gelu_tanh", sliding_window=8
  )
  assert hf.family_for(gemma2) == "gemma2"
  assert hf.family_for(dataclasses.replace(gemma2, qk_norm=True)) == "gemma3_text"
  with pytest.raises(ValueError, match="config.model.rope_local_theta"):  # Gemma 2 has one RoPE base
    hf.hf_config_for(dataclasses.replace(gemma2, rope_local_theta=100.0))
  with pytest.raises(ValueError, match="config.model.rope_local_theta"):  # Gemma 3 scales no local RoPE
    hf.hf_config_for(dataclasses.replace(gemma2, qk_norm=True, rope_scaling="linear", rope_factor=2.0))
  linear = dataclasses.replace(cfg, rope_scaling="linear", rope_factor=2.0)  # Llama's linear RoPE
  assert hf.hf_config_for(linear)["rope_parameters"] == {
    "rope_type": "linear",
    "rope_theta": 1e4,
    "factor": 2.0,
  }


# --------------------------------------------------------------------------------- backbone options
def test_sliding_window_is_the_same_in_every_attention_path():
  """xla's static window (local_window_size), the explicit mask and a per-layer (traced) window agree."""
  from lime_jax.model import attention  # pylint: disable=g-import-not-at-top

  g = np.random.default_rng(0)
  q, k, v = (jnp.asarray(g.standard_normal((2, 12, n, 8)), jnp.float32) for n in (4, 2, 2))
  window = 3
  xla, _ = attention.attend(q, k, v, "xla", window=window)
  explicit, probs = attention.attend(q, k, v, "explicit", window=window)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  mask = attention.causal_mask(pos, pos) & attention.window_mask(pos, pos, jnp.int32(window))
  traced, _ = attention.attend(q, k, v, "xla", mask)
  np.testing.assert_allclose(xla, explicit, atol=1e-6)
  np.testing.assert_allclose(traced, explicit, atol=1e-6)
  seen = np.asarray(probs[0, 0] > 0)
  assert seen.sum(axis=1).tolist() == [min(t + 1, window) for t in range(12)]


@pytest.mark.parametrize(
  "changes,field",
  [
    (dict(position="learned"), "model.max_positions"),
    (dict(sliding_window=4, global_layers=(1,), topology="lime"), "model.global_layers"),
    (dict(global_layers=(1,)), "model.global_layers"),
    (dict(norm_type="batch"), "model.norm_type"),
    (dict(rope_scaling="yarn"), "model.rope_scaling"),
    (dict(rope_scaling="linear", rope_factor=0.0), "model.rope_factor"),
    (dict(rope_local_theta=100.0), "model.rope_local_theta"),
    (
      dict(rope_local_theta=100.0, sliding_window=4, position="learned", max_positions=64),
      "model.rope_local_theta",
    ),
    (dict(attn_logit_softcap=30.0, attention_impl="cudnn"), "model.attention_impl"),
    (dict(d_model=72, num_heads=5), "model.d_model"),
  ],
)
def test_backbone_options_are_validated(changes, field):
  from lime_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.default_config()
  for name, value in changes.items():
    config.model[name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_lib.validate(config)
  if field == "model.d_model":  # a decoupled head_dim makes it valid
    config.model.attn_head_dim = 16
    config_lib.validate(config)


def test_flops_and_checkpoint_signature_follow_the_options():
  """GPT-2's MLP has two matrices, a sliding window caps the attention FLOPs, and the checkpoint
  signature names a shape-changing option only when it is set (older checkpoints still match)."""
  from lime_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from lime_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from lime_jax.model import flops  # pylint: disable=g-import-not-at-top

  cfg = ModelConfig(vocab_size=V, num_layers=2, d_model=64, num_heads=4, ffn_dim=128)
  gelu = dataclasses.replace(cfg, mlp_gated=False)
  assert flops.matmul_params(cfg) - flops.matmul_params(gelu) == 2 * 64 * 128
  windowed = dataclasses.replace(cfg, sliding_window=8)
  attn = lambda c: flops.forward_flops_per_token(c, 1024) - 2.0 * flops.matmul_params(c)
  assert attn(windowed) == pytest.approx(attn(cfg) * (8 * 9 / 2 + 1016 * 8) / 1024 / 512)
  half = attn(dataclasses.replace(windowed, global_layers=(1,)))
  assert half == pytest.approx((attn(cfg) + attn(windowed)) / 2)
  model = config_lib.default_config().model
  plain = checkpoint.arch_signature(model, V)
  model.qkv_bias = True
  assert checkpoint.arch_signature(model, V) == {**plain, "qkv_bias": True}
