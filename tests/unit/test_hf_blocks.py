"""The per-tensor conversion behind the sharded loader (lime_jax/hf/weights.py `read_leaf`): any block of
any leaf, read from the HF tensors' rows / columns alone, equals that block of the whole converted leaf;
and the memory figures and refusal of lime_jax/runtime/sharding.py."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from lime_jax.hf import weights
from lime_jax.runtime import errors
from lime_jax.runtime import sharding as shard_lib
from tests.conftest import tiny_model_config


def _state_dict(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Random HF tensors for every key `cfg`'s recipes read (GPT-2: q | k | v joined into c_attn)."""
  g = np.random.default_rng(seed)
  keys = weights.expected_keys(weights.recipes(cfg), cfg)
  sd = {k: g.standard_normal(shape).astype(np.float32) for k, shape in keys.items()}
  return weights._join_c_attn(sd) if cfg.position == "learned" else sd  # pylint: disable=protected-access


class _CountingSource(weights.MappingSource):
  """Counts the stored elements read."""

  def __init__(self, sd):
    super().__init__(sd)
    self.read_elements = 0

  def read(self, key, index):
    x = super().read(key, index)
    self.read_elements += x.size
    return x


def _random_block(shape: tuple[int, ...], g: np.random.Generator) -> tuple[slice, ...]:
  out = []
  for n in shape:
    lo = int(g.integers(0, n))
    out.append(slice(lo, int(g.integers(lo + 1, n + 1))))
  return tuple(out)


CONFIGS = {
  "llama_gqa_bias": dict(num_kv_heads=2, qkv_bias=True, out_bias=True, qk_norm=True, tie_embeddings=False),
  "gpt2": dict(
    position="learned",
    norm_type="layer",
    mlp_gated=False,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
    max_positions=16,
  ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_block_of_every_leaf_equals_the_whole_leaf_sliced(name):
  cfg = tiny_model_config(**CONFIGS[name])
  sd = _state_dict(cfg)
  if cfg.tie_embeddings:
    sd["lm_head.weight"] = sd["transformer.wte.weight" if name == "gpt2" else "model.embed_tokens.weight"]
  whole = weights.hf_state_dict_to_params(sd, cfg)
  source = weights.aliased(weights.MappingSource(sd), cfg)
  g = np.random.default_rng(1)
  for recipe in weights.recipes(cfg):
    leaf = whole
    for part in recipe.path:
      leaf = leaf[part]
    leaf = np.asarray(leaf)
    for _ in range(6):
      block = _random_block(recipe.shape, g)
      np.testing.assert_array_equal(
        weights.read_leaf(source, recipe, block), leaf[block], err_msg=str(recipe.path)
      )


def test_a_block_reads_only_its_rows_and_columns():
  """A d_model-sharded block of wq (an fsdp shard) reads 1/4 of each layer's q_proj, not all of it."""
  cfg = tiny_model_config(num_kv_heads=2)
  source = _CountingSource(_state_dict(cfg))
  wq = next(r for r in weights.recipes(cfg) if r.path == ("layers", "wq"))
  D = cfg.d_model
  block = (slice(0, cfg.num_layers), slice(D // 4, D // 2), slice(None), slice(None))
  x = weights.read_leaf(source, wq, block)
  assert x.shape == (cfg.num_layers, D // 4, cfg.num_heads, cfg.head_dim)
  assert source.read_elements == x.size


def test_tied_embeddings_are_checked_block_by_block():
  cfg = tiny_model_config(tie_embeddings=True)
  sd = _state_dict(cfg)
  sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
  sd["lm_head.weight"][3, 5] += 1.0
  source = weights.MappingSource(sd)
  embed = next(r for r in weights.recipes(cfg) if r.path == ("embed",))
  weights.read_leaf(source, embed, (slice(0, 2), slice(None)))  # rows that agree
  with pytest.raises(ValueError, match="lm_head"):
    weights.read_leaf(source, embed, (slice(2, 4), slice(None)))


def test_bytes_per_device_and_the_refusal_name_the_figure_and_the_fsdp_size():
  """Per-device bytes follow the rules for any axis sizes (no devices needed); a tree too large for a
  device is refused naming the fsdp size that holds it."""
  tree = {
    "layers": {"wq": jax.ShapeDtypeStruct((2, 64, 4, 16), np.float32)},  # embed -> fsdp, heads -> tensor
    "final_norm": {"scale": jax.ShapeDtypeStruct((64,), np.float32)},  # never sharded
  }
  wq, norm = 2 * 64 * 4 * 16 * 4, 64 * 4
  assert shard_lib.bytes_per_device(tree, {"data": 1, "fsdp": 1, "tensor": 1}) == (wq + norm, norm)
  assert shard_lib.bytes_per_device(tree, {"data": 2, "fsdp": 8, "tensor": 2}) == (wq // 16 + norm, norm)
  assert shard_lib.bytes_per_device(tree, {"data": 1, "fsdp": 128, "tensor": 1}) == (
    wq + norm,
    norm,
  )  # 64 % 128
  mesh = shard_lib.make_mesh(
    ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1]
  )
  shard_lib.check_fits(tree, mesh, None, "The parameters")  # no figure (CPU): no check
  shard_lib.check_fits(tree, mesh, wq + norm, "The parameters")
  with pytest.raises(
    errors.DoesNotFitError,
    match=r"0.03 MiB per device on mesh data=1 fsdp=1 tensor=1 .*fsdp=4 .*--mesh_fsdp=4",
  ):
    shard_lib.check_fits(tree, mesh, wq // 3, "The parameters")
  with pytest.raises(errors.DoesNotFitError, match="no mesh holds them"):
    shard_lib.check_fits(tree, mesh, norm // 2, "The parameters")
