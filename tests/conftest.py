"""Shared test fixtures: strict numerics, a tiny model config factory, and the tiers' markers (tests under
tests/integration/ are marked `integration`, those under tests/e2e/ `e2e` and `integration`, so that
`pytest -m "not integration"` runs tests/unit/, the fast tier)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile

# Importable without `pip install -e .`: put the repository root first on the path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax.model import ModelConfig

# Implicit rank promotion hides shape bugs (a [D] times a [B, T, D] that should have been [B, T, 1]).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compare fp32 numbers to 1e-5; keep matmuls at full fp32 precision on every backend.
jax.config.update("jax_default_matmul_precision", "highest")


def tiny_model_config(**overrides) -> ModelConfig:
  """A small but non-degenerate decoder: GQA off, 2 layers, head_dim 8."""
  base = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=4, num_kv_heads=4, ffn_dim=64, init_std=0.1)
  base.update(overrides)
  return ModelConfig(**base)


def random_params(cfg: ModelConfig, seed: int = 0, std: float = 0.1, norm_std: float = 0.3) -> dict:
  """Plain-topology parameters with the layout of `init_params`, drawn with numpy (no tracing).

  Much cheaper than `init_params` (which runs a forward pass per new config). Weights ~ N(0, std);
  norm scales ~ 1 + N(0, norm_std), so a swapped or ignored norm shows up in the outputs.
  `test_random_params_match_init_layout` keeps this in sync with the model.
  """
  L, D, N, R, H, F, V = (
    cfg.num_layers,
    cfg.d_model,
    cfg.num_heads,
    cfg.num_kv_heads,
    cfg.head_dim,
    cfg.ffn_dim,
    cfg.vocab_size,
  )
  g = np.random.default_rng(seed)
  w = lambda *shape: jnp.asarray(std * g.standard_normal(shape), cfg.pdtype)
  norm = lambda *shape: jnp.asarray(1.0 + norm_std * g.standard_normal(shape), cfg.pdtype)
  params = {
    "embed": w(V, D),
    "layers": {
      "attn_norm": {"scale": norm(L, D)},
      "wq": w(L, D, N, H),
      "wkv": w(L, D, R, 2 * H),
      "wo": w(L, N, H, D),
      "mlp_norm": {"scale": norm(L, D)},
      "mlp": {"w_gate": w(L, D, F), "w_up": w(L, D, F), "w_down": w(L, F, D)},
    },
    "final_norm": {"scale": norm(D)},
  }
  if not cfg.tie_embeddings:
    params["unembed"] = w(D, V)
  return params


TIERS = {"integration": ("integration",), "e2e": ("e2e", "integration")}


def pytest_collection_modifyitems(items):
  """Marks each test under tests/<tier>/ with TIERS[tier]."""
  tests = pathlib.Path(__file__).resolve().parent
  for item in items:
    path = item.path.resolve()
    if path.is_relative_to(tests):
      for marker in TIERS.get(path.relative_to(tests).parts[0], ()):
        item.add_marker(marker)


_CACHE_MADE = pytest.StashKey[str]()


def pytest_configure(config):
  """lime_jax's caches (lime_jax/runtime/caches.py: the CPU peak and jax's persistent compilation cache) in a
  fresh directory per test session, chosen once by the controlling pytest process: the pytest-xdist
  workers and every subprocess inherit it through the environment, so a run neither reads nor fills
  ~/.cache, and every test process (binaries included) reuses the executables an earlier test compiled
  (jax writes cache entries atomically). Exported LIME_JAX_CACHE_DIR / JAX_COMPILATION_CACHE_DIR are kept."""
  if hasattr(config, "workerinput"):  # an xdist worker: the controller has set them
    return
  if "LIME_JAX_CACHE_DIR" not in os.environ:
    os.environ["LIME_JAX_CACHE_DIR"] = config.stash[_CACHE_MADE] = tempfile.mkdtemp(prefix="lime_jax_test_")
  root = os.environ["LIME_JAX_CACHE_DIR"]
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache"))


def pytest_unconfigure(config):
  """Removes the session's cache directory where `pytest_configure` made it."""
  made = config.stash.get(_CACHE_MADE, None)
  if made:
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _session_user_cache():
  """This process's jax reads and writes the session's compilation cache (`pytest_configure`)."""
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops jax's in-memory caches after each test module. Every compiled program keeps its JIT code
  mapped; one pytest process of the whole suite accumulated enough of them to crash XLA's compiler
  (a segfault in `backend_compile_and_load` at ~75% of the suite; Linux allows 65530 mappings per
  process). Programs an earlier module compiled come back from the persistent cache above."""
  yield
  jax.clear_caches()


@pytest.fixture
def make_cfg():
  """Factory fixture: `make_cfg(num_kv_heads=2, ...)` -> ModelConfig."""
  return tiny_model_config


@pytest.fixture
def rng() -> jax.Array:
  return jax.random.key(0)


def replace(cfg: ModelConfig, **changes) -> ModelConfig:
  """dataclasses.replace, re-exported for brevity in tests."""
  return dataclasses.replace(cfg, **changes)
