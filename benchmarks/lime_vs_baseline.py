"""LIMe (kv router) against the LLaMA baseline: step time, compile time, temp memory, FLOP ratio.

Prints one table row per (policy, depth, variant). Variants: 'base' (plain stack), 'lime' (custom-VJP
stack, lime_jax/model/lime_stack.py) and 'scan' (LIMe as a plain scan with the buffer in the carry,
the O(L^2)-memory design it replaces). A step is jitted value_and_grad + an SGD update, measured as
the median of --steps steps after --warmup, variants interleaved step by step; 't ratio' is wall
time, 'cpu ratio' process CPU time (steadier when other jobs share the cores); 'min t/F' is t/F from
the fastest step of each variant instead of the median (load on the machine only ever adds time).
Temp memory comes from XLA's memory_analysis(); 'overhd' = variant - base; 'buf+cot' = the LIMe
buffer and its cotangent.
FLOP ratio: lime_jax.model.lime.flops_per_token (6N + causal attention + mixing, see there).

  python benchmarks/lime_vs_baseline.py                       # depths 8 16 32 64, policies none full
  python benchmarks/lime_vs_baseline.py --depths 8 16 --policies full --scan_depths 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from lime_jax.model import LimeConfig, ModelConfig, Transformer, init_params
from lime_jax.model.lime import buffer_bytes, flops_per_token

MIB = 2**20


def model_config(
  depth: int, policy: str, vocab: int = 256, block_size: int = 4, group_size: int = 0
) -> ModelConfig:
  """The benchmarks' baseline: d_model 256, 8 heads (R = 8), FFN 1024, fp32; topology='lime' for LIMe."""
  return ModelConfig(
    vocab_size=vocab,
    num_layers=depth,
    d_model=256,
    num_heads=8,
    num_kv_heads=8,
    ffn_dim=1024,
    remat_policy=policy,
    lime=LimeConfig(router="kv", block_size=block_size, group_size=group_size),
  )


def make_step(cfg: ModelConfig, lr: float = 1e-3):
  """Jittable SGD step on next-token cross-entropy."""

  def loss_fn(params, tokens_BT):
    logits_BTV, _ = Transformer(cfg).apply({"params": params}, tokens_BT[:, :-1])
    logp_BTV = jax.nn.log_softmax(logits_BTV)
    return -jnp.mean(jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1))

  def step(params, tokens_BT):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BT)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

  return step


def compile_step(cfg: ModelConfig, batch: int, seq: int, compile_reps: int = 1) -> dict:
  """Params, tokens, the compiled step, its compile time and temp bytes."""
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens_BT = jax.random.randint(jax.random.PRNGKey(1), (batch, seq + 1), 0, cfg.vocab_size)
  compile_s = float("inf")
  for _ in range(compile_reps):  # min over repetitions: compile time is noisy on a shared machine
    t0 = time.perf_counter()
    compiled = jax.jit(make_step(cfg), donate_argnums=0).lower(params, tokens_BT).compile()
    compile_s = min(compile_s, time.perf_counter() - t0)
  return {
    "params": params,
    "tokens": tokens_BT,
    "compiled": compiled,
    "compile_s": compile_s,
    "temp": compiled.memory_analysis().temp_size_in_bytes,
    "times": [],
  }


def time_steps(runs: dict[str, dict], steps: int, warmup: int) -> None:
  """Round-robin over the variants, one step each per round, so that load on the machine hits all
  variants alike; records wall and process CPU time of the steps after `warmup` rounds."""
  for i in range(warmup + steps):
    for run in runs.values():
      t0, c0 = time.perf_counter(), time.process_time()
      run["params"], loss = run["compiled"](run["params"], run["tokens"])
      loss.block_until_ready()
      if i >= warmup:
        run["times"].append((time.perf_counter() - t0, time.process_time() - c0))
  for run in runs.values():
    run["step_ms"] = 1e3 * statistics.median(t for t, _ in run["times"])
    run["cpu_ms"] = 1e3 * statistics.median(c for _, c in run["times"])
    run["min_ms"] = 1e3 * min(t for t, _ in run["times"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64])
  parser.add_argument("--policies", nargs="+", default=["none", "full"])
  parser.add_argument(
    "--scan_depths",
    type=int,
    nargs="*",
    default=[8, 16, 32],
    help="depths at which the plain-scan LIMe also runs (it is slow and O(L^2)).",
  )
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
    "--block_size",
    type=int,
    default=4,
    help="LIMe source block size (the default 4 against 8: docs/benchmarks.md).",
  )
  parser.add_argument(
    "--group_size",
    type=int,
    default=0,
    help="LIMe layers per group of the two-level schedule (0: auto ~sqrt(L), 1: off).",
  )
  parser.add_argument("--compile_reps", type=int, default=2, help="compile time = min over repetitions.")
  parser.add_argument("--vocab", type=int, default=256)
  args = parser.parse_args()

  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}; B={args.batch} T={args.seq} D=256 N=R=8 "
    f"F=1024 V={args.vocab} fp32, block_size={args.block_size}, group_size={args.group_size}, "
    f"median of {args.steps} steps"
  )
  header = (
    f"{'policy':>9} {'L':>3} {'variant':>7} {'step ms':>9} {'t ratio':>7} {'cpu ratio':>9} "
    f"{'F ratio':>7} {'t/F':>5} {'compile s':>9} {'temp MiB':>9} {'overhd MiB':>10} "
    f"{'buf+cot MiB':>11} {'ovh/bc':>6} {'min t/F':>7}"
  )
  print(header)
  for policy in args.policies:
    compile_by_depth = {}
    for depth in args.depths:
      base = model_config(depth, policy, args.vocab, args.block_size, args.group_size)
      variants = {"base": base, "lime": dataclasses.replace(base, topology="lime")}
      if depth in args.scan_depths:
        variants["scan"] = dataclasses.replace(base, topology="lime_scan")
      results = {
        name: compile_step(cfg, args.batch, args.seq, args.compile_reps) for name, cfg in variants.items()
      }
      time_steps(results, args.steps, args.warmup)
      bufcot = 2 * buffer_bytes(variants["lime"], args.batch, args.seq)
      flop_ratio = flops_per_token(variants["lime"], args.seq) / flops_per_token(base, args.seq)
      compile_by_depth[depth] = results["lime"]["compile_s"]
      for name, r in results.items():
        t_ratio = r["step_ms"] / results["base"]["step_ms"]
        cpu_ratio = r["cpu_ms"] / results["base"]["cpu_ms"]
        f_ratio = 1.0 if name == "base" else flop_ratio
        overhead = r["temp"] - results["base"]["temp"]
        print(
          f"{policy:>9} {depth:>3} {name:>7} {r['step_ms']:9.1f} {t_ratio:7.3f} {cpu_ratio:9.3f} "
          f"{f_ratio:7.3f} "
          f"{t_ratio / f_ratio:5.2f} {r['compile_s']:9.2f} {r['temp'] / MIB:9.1f} "
          f"{overhead / MIB:10.1f} {bufcot / MIB:11.1f} {overhead / bufcot:6.2f} "
          f"{r['min_ms'] / results['base']['min_ms'] / f_ratio:7.2f}",
          flush=True,
        )
    if len(compile_by_depth) > 1:
      lo, hi = min(compile_by_depth), max(compile_by_depth)
      print(
        f"{policy:>9} lime compile({hi}) / compile({lo}) = {compile_by_depth[hi] / compile_by_depth[lo]:.2f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
