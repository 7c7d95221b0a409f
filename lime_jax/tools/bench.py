"""Train-step benchmark: compile time, step time, tokens/s, MFU and temp memory per depth.

  python -m lime_jax.tools.bench [--depths=4,16,32] [--d_model=256] [--batch=8] [--seq=128] [--steps=5]

MFU, in percent (as `mfu_pct` in training), is measured against a jitted fp32 matmul peak measured at the
start of the same run, and uses the FLOP convention of lime_jax/model/flops.py (3 x forward, causal-halved
attention, no remat recompute).
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

import dataclasses
import functools
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from lime_jax.config import default_config
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.model import flops as flops_lib
from lime_jax.runtime import peak_flops
from lime_jax.train import optimizer as opt_lib
from lime_jax.train import step as step_lib


@dataclasses.dataclass
class StepTiming:
  compile_s: float
  step_s: float
  temp_mib: float
  flops_per_step: float


def random_batch(cfg: ModelConfig, batch: int, seq: int, seed: int = 0) -> dict[str, jax.Array]:
  tokens_BT = jax.random.randint(jax.random.key(seed), (batch, seq + 1), 0, cfg.vocab_size)
  ones_BT = jnp.ones((batch, seq), jnp.float32)
  return {
    "inputs": tokens_BT[:, :-1],
    "targets": tokens_BT[:, 1:],
    "loss_mask": ones_BT,
    "answer_mask": ones_BT,
  }


def time_train_step(
  cfg: ModelConfig, train_cfg: ml_collections.ConfigDict, batch: int, seq: int, steps: int = 5
) -> StepTiming:
  """Compiles the real train step (AdamW included) and times `steps` steps after one warm-up."""
  model = Transformer(cfg)
  params = init_params(cfg, jax.random.key(0))
  optimizer = opt_lib.make_optimizer(train_cfg, params)
  state = step_lib.init_train_state(params, optimizer)
  data = random_batch(cfg, batch, seq)
  step_fn = jax.jit(
    step_lib.make_train_step(model, optimizer, opt_lib.lr_schedule(train_cfg)), donate_argnums=(0,)
  )
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp_mib = mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan")
  state, m = compiled(state, data)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return StepTiming(
    compile_s, statistics.median(times), temp_mib, flops_lib.train_flops_per_step(cfg, batch, seq)
  )


def model_config(num_layers: int, d_model: int, num_heads: int, vocab: int, **overrides: Any) -> ModelConfig:
  return ModelConfig(
    vocab_size=vocab,
    num_layers=num_layers,
    d_model=d_model,
    num_heads=num_heads,
    num_kv_heads=num_heads,
    ffn_dim=4 * d_model,
    **overrides,
  )


_DEPTHS = flags.DEFINE_list("depths", ["4", "16", "32"], "Numbers of layers.")
_D_MODEL = flags.DEFINE_integer("d_model", 256, "Model width.")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq", 128, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per configuration (median reported).")
_REMAT = flags.DEFINE_string("remat", "none", "Remat policy: none, full or save_dots.")
_VOCAB = flags.DEFINE_integer("vocab", 512, "Vocabulary size.")


def main(argv: list[str]) -> None:
  del argv
  peak = peak_flops.measure_matmul_peak(n=2048)
  train_cfg = default_config().train
  print(
    f"device: {jax.devices()[0].device_kind} x{jax.device_count()} | jax {jax.__version__} | "
    f"measured fp32 2048^2 matmul peak: {peak / 1e9:.1f} GFLOP/s"
  )
  print(
    f"baseline LLaMA, d_model={_D_MODEL.value}, heads={_HEADS.value}, batch={_BATCH.value}, "
    f"seq={_SEQ.value}, remat={_REMAT.value}, vocab={_VOCAB.value}"
  )
  print("| layers | params | compile (s) | step (ms) | tokens/s | MFU (%) | temp memory (MiB) |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for depth in map(int, _DEPTHS.value):
    cfg = model_config(depth, _D_MODEL.value, _HEADS.value, _VOCAB.value, remat_policy=_REMAT.value)
    timing = time_train_step(cfg, train_cfg, _BATCH.value, _SEQ.value, _STEPS.value)
    n_params = sum(
      x.size for x in jax.tree.leaves(jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0)))
    )
    tokens_s = _BATCH.value * _SEQ.value / timing.step_s
    mfu_pct = 100.0 * timing.flops_per_step / timing.step_s / peak  # percent, as train's `mfu_pct`
    print(
      f"| {depth} | {n_params:,} | {timing.compile_s:.2f} | {timing.step_s * 1e3:.1f} | {tokens_s:,.0f} | "
      f"{mfu_pct:.2f} | {timing.temp_mib:.1f} |",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
