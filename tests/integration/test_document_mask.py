"""Document masking of packed text (`model.document_mask`): a masked packed row equals each document run
alone, forward and gradients, for the plain stack and LIMe's custom-VJP stack; a text run with the mask
trains and evaluates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.model.model_config import LimeConfig
from lime_jax.train import loop as train_lib
from tests.integration.test_lime_exactness import lime_params
from tests.unit.test_corpus import _config

A_LEN, B_LEN = 5, 7


def _cfg(topology: str, document_mask: bool) -> ModelConfig:
  return ModelConfig(
    vocab_size=61,
    num_layers=3,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    ffn_dim=64,
    init_std=0.1,
    topology=topology,
    document_mask=document_mask,
    lime=LimeConfig(router="kv", block_size=2),
  )


def _params(cfg: ModelConfig) -> dict:
  return lime_params(cfg) if cfg.topology == "lime" else init_params(cfg, jax.random.PRNGKey(0))


def _docs() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Two documents A, B [1, len] and their packed row [1, A_LEN + B_LEN] with per-document positions."""
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, A_LEN + B_LEN), 16, 61)
  positions = jnp.concatenate([jnp.arange(A_LEN), jnp.arange(B_LEN)])[None]
  return tokens[:, :A_LEN], tokens[:, A_LEN:], tokens, positions


@pytest.mark.parametrize("topology", ["plain", "lime"])
def test_masked_packed_row_equals_each_document_alone(topology):
  cfg = _cfg(topology, document_mask=True)
  params = _params(cfg)
  doc_a, doc_b, packed, positions = _docs()
  apply = lambda c, tokens, pos=None: Transformer(c).apply({"params": params}, tokens, pos)[0]
  logits = apply(cfg, packed, positions)
  np.testing.assert_allclose(logits[:, :A_LEN], apply(cfg, doc_a), atol=1e-5)
  np.testing.assert_allclose(logits[:, A_LEN:], apply(cfg, doc_b), atol=1e-5)
  # Without the mask, document B attends to A: its logits differ (so the check above can fail).
  unmasked = apply(_cfg(topology, document_mask=False), packed, positions)
  assert float(jnp.max(jnp.abs(unmasked[:, A_LEN:] - logits[:, A_LEN:]))) > 1e-3


@pytest.mark.parametrize("topology", ["plain", "lime"])
def test_masked_gradients_equal_the_sum_over_documents(topology):
  """The backward pass too (LIMe: its memory-linear custom VJP) sees the documents as separate."""
  cfg = _cfg(topology, document_mask=True)
  params = _params(cfg)
  doc_a, doc_b, packed, positions = _docs()

  def loss(p, tokens, pos=None):
    logits = Transformer(cfg).apply({"params": p}, tokens, pos)[0]
    return jnp.sum(jnp.sin(logits))  # a fixed, position-wise probe of the logits

  grads_packed = jax.grad(loss)(params, packed, positions)
  grads_apart = jax.tree.map(jnp.add, jax.grad(loss)(params, doc_a), jax.grad(loss)(params, doc_b))
  for g, want in zip(jax.tree.leaves(grads_packed), jax.tree.leaves(grads_apart)):
    np.testing.assert_allclose(g, want, atol=2e-4, rtol=1e-4)


def test_text_run_trains_and_evaluates_with_the_document_mask(tmp_path):
  (tmp_path / "data").mkdir()
  c, _ = _config(tmp_path / "data", "parquet")
  c.model.update(document_mask=True, num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.train.update(num_steps=3, log_every=1, checkpoint_every=3, eval_every=3, async_checkpoint=False)
  result = train_lib.train(c, str(tmp_path / "run"))
  assert result.metrics["status"] == "completed"
  assert np.isfinite(result.metrics["eval"]["perplexity"]) and result.metrics["eval"]["bits_per_byte"] > 0
