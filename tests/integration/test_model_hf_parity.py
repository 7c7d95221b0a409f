"""The backbone against Hugging Face LLaMA (transformers, torch): logits both ways and the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import hf
from lime_jax.model.model_config import ModelConfig
from tests.conftest import random_params
from tests.unit.test_model import _hf_cfg, _jit_forward, _max_diff, _tokens

# Jitted forward shared by tests (the compilation cache is keyed by cfg and shapes).


# ------------------------------------------------------------------------------------ 1. HF parity

HF_CASES = [  # (num_kv_heads, tie_embeddings, rope_theta, first position)
  (4, True, 10_000.0, 0),
  (4, False, 500_000.0, 37),
  (2, True, 500_000.0, 0),
  (2, False, 10_000.0, 101),
]


def _hf_model(cfg: ModelConfig):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  hf_config = transformers.LlamaConfig.from_dict({**hf.hf_config_for(cfg), "max_position_embeddings": 256})
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_config).to(torch.float32).eval()
  return model, torch


def _hf_logits(model, torch, tokens_BT: jax.Array, positions_BT: jax.Array) -> np.ndarray:
  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(np.asarray(tokens_BT, np.int64)),
      position_ids=torch.from_numpy(np.asarray(positions_BT, np.int64)),
      use_cache=False,
    )
  return out.logits.float().numpy()


@pytest.mark.parametrize("num_kv_heads,tie,theta,start", HF_CASES)
def test_hf_to_ours_logits_match(num_kv_heads, tie, theta, start):
  cfg = _hf_cfg(num_kv_heads, tie, theta)
  model, torch = _hf_model(cfg)
  gen = torch.Generator().manual_seed(num_kv_heads * 10 + int(tie))
  with torch.no_grad():  # Random weights everywhere, norms included (HF inits those to 1).
    for p in model.parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.3 * noise if p.ndim == 1 else 0.1 * noise)
  assert model.config._attn_implementation == "eager"  # pylint: disable=protected-access
  assert model.config.rope_parameters["rope_theta"] == theta

  params = hf.hf_state_dict_to_params(model.state_dict(), cfg)
  tokens_BT = _tokens(cfg, 2, 24)
  positions_BT = jnp.broadcast_to(jnp.arange(24) + start, (2, 24))
  ours_BTV, _ = _jit_forward(cfg, params, tokens_BT, positions_BT=positions_BT)
  theirs_BTV = _hf_logits(model, torch, tokens_BT, positions_BT)
  assert np.std(theirs_BTV) > 0.1, "logits too flat to test anything"
  assert _max_diff(ours_BTV, theirs_BTV) <= 1e-4


@pytest.mark.parametrize("num_kv_heads,tie,theta,start", HF_CASES[1:3])
def test_ours_to_hf_logits_match(num_kv_heads, tie, theta, start):
  cfg = _hf_cfg(num_kv_heads, tie, theta)
  params = random_params(cfg, 3)
  model, torch = _hf_model(cfg)
  model.load_state_dict(hf.params_to_hf_state_dict(params, cfg, as_torch=True), strict=True)
  if tie:  # Loading must not have untied the head from the embedding.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  tokens_BT = _tokens(cfg, 2, 20, seed=4)
  positions_BT = jnp.broadcast_to(jnp.arange(20) + start, (2, 20))
  ours_BTV, _ = _jit_forward(cfg, params, tokens_BT, positions_BT=positions_BT)
  theirs_BTV = _hf_logits(model, torch, tokens_BT, positions_BT)
  assert _max_diff(ours_BTV, theirs_BTV) <= 1e-4


def test_model_config_from_hf_round_trips():
  transformers = pytest.importorskip("transformers")
  cfg = _hf_cfg(2, False, 500_000.0)
  assert hf.model_config_from_hf(transformers.LlamaConfig.from_dict(hf.hf_config_for(cfg))) == cfg
