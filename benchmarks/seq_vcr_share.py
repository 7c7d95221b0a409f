"""Seq-VCR's cost as a share of a train step (issue 4 target: <= 10% at projection 2048, N=32, T=32).

  python benchmarks/seq_vcr_share.py [--preset=default] [--proj_dim=2048] [--batch=32] [--seq_len=32]

Model: experiments/seqvcr_mult.py:PRESET (default: the CPU model, 4 layers x d_model 128, 4 heads, FFN
512), Seq-VCR on the final block, per-position variant. Times, each the median of --repeats runs of
--iters calls after a warm-up, all in one process:
  step_seqvcr   the full jitted train step (forward, backward, AdamW) with Seq-VCR;
  step_plain    the same step with Seq-VCR off (no projection);
  loss          the Seq-VCR loss alone, forward + backward wrt its input z [N, T, P];
  proj_loss     projection + loss, forward + backward wrt the layer output h [N, T, D] and the projection.
Shares: loss / step_seqvcr (the target), proj_loss / step_seqvcr, and (step_seqvcr - step_plain) /
step_seqvcr (what Seq-VCR adds end to end, including XLA's scheduling inside the scan).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.losses import seq_vcr_loss
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.train import optimizer as opt_lib
from lime_jax.train import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(preset: str, proj_dim: int, batch: int, seq_len: int, enabled: bool):
  spec = importlib.util.spec_from_file_location("seqvcr_mult", REPO / "experiments" / "seqvcr_mult.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"{preset},{'seqvcr' if enabled else 'vanilla'}")
  c.model.seq_vcr.update(enabled=enabled, proj_dim=proj_dim)
  c.train.batch_size = batch
  c.data.seq_len = seq_len
  return c


def _time(fn, args, iters: int, repeats: int) -> float:
  """Median seconds per call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / iters)
  return statistics.median(times)


def _step_fn(c, vocab: int):
  cfg = ModelConfig.from_config(c.model, vocab)
  params = init_params(cfg, jax.random.key(0))
  optimizer = opt_lib.make_optimizer(c.train, params)
  state = step_lib.init_train_state(params, optimizer)
  step = jax.jit(step_lib.make_train_step(Transformer(cfg), optimizer, opt_lib.lr_schedule(c.train)))
  rng = np.random.default_rng(0)
  B, T = c.train.batch_size, c.data.seq_len
  batch = {
    "inputs": jnp.asarray(rng.integers(1, vocab, (B, T)), jnp.int32),
    "targets": jnp.asarray(rng.integers(1, vocab, (B, T)), jnp.int32),
    "loss_mask": jnp.ones((B, T), jnp.float32),
    "answer_mask": jnp.ones((B, T), jnp.float32),
  }
  return step, (state, batch), cfg


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="default")
  parser.add_argument("--proj_dim", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=32)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  vocab = 32
  N, T, P = args.batch, args.seq_len, args.proj_dim
  c_on = _config(args.preset, P, N, T, True)
  c_off = _config(args.preset, P, N, T, False)
  step_on, step_on_args, cfg = _step_fn(c_on, vocab)
  step_off, step_off_args, _ = _step_fn(c_off, vocab)
  sv = cfg.seq_vcr
  D = cfg.d_model

  def loss_only(z):
    return seq_vcr_loss(z, None, lambda1=sv.lambda1, lambda2=sv.lambda2, eta=sv.eta)["loss"]

  def proj_loss(h, proj):
    return loss_only(jnp.einsum("btd,dp->btp", h, proj))

  rng = jax.random.key(1)
  z = jax.random.normal(rng, (N, T, P), jnp.float32)
  h = jax.random.normal(rng, (N, T, D), jnp.float32)
  proj = jax.random.normal(rng, (D, P), jnp.float32) * D**-0.5
  loss_grad = jax.jit(jax.value_and_grad(loss_only))
  proj_grad = jax.jit(jax.value_and_grad(proj_loss, argnums=(0, 1)))

  # Interleave the measurements so that load from other processes hits them alike.
  t = {"step_seqvcr": [], "step_plain": [], "loss": [], "proj_loss": []}
  for _ in range(3):
    t["step_seqvcr"].append(_time(step_on, step_on_args, args.iters, args.repeats))
    t["step_plain"].append(_time(step_off, step_off_args, args.iters, args.repeats))
    t["loss"].append(_time(loss_grad, (z,), args.iters, args.repeats))
    t["proj_loss"].append(_time(proj_grad, (h, proj), args.iters, args.repeats))
  ms = {k: 1e3 * min(v) for k, v in t.items()}
  result = {
    "model": f"{cfg.num_layers} layers x d_model {D}, {cfg.num_heads} heads, FFN {cfg.ffn_dim}",
    "N": N,
    "T": T,
    "proj_dim": P,
    "backend": jax.default_backend(),
    **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
    "share_loss": round(ms["loss"] / ms["step_seqvcr"], 4),
    "share_proj_loss": round(ms["proj_loss"] / ms["step_seqvcr"], 4),
    "share_end_to_end": round((ms["step_seqvcr"] - ms["step_plain"]) / ms["step_seqvcr"], 4),
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
