"""Every residual topology against the plain LLaMA stack: step time, temp memory, FLOP ratio.

One jitted value_and_grad + SGD step per topology (benchmarks/lime_vs_baseline.py's step), variants
interleaved step by step so that load on the shared machine hits all alike; median of --steps steps
after --warmup. 't ratio' = wall time / plain's, 'cpu ratio' = process CPU time / plain's, 'mem ratio' =
XLA temp memory (memory_analysis of the compiled step) / plain's, 'F ratio' = analytic FLOPs / plain's
(lime_jax/model/flops.py, the topology's extra FLOPs included). 'denseformer_scan' is DenseFormer as a plain
scan with the history in the carry (the O(L^2)-memory design the custom VJP avoids).

  python benchmarks/topologies.py                       # depth 32, d_model 256, B 2, T 64, remat none
  python benchmarks/topologies.py --depth 16 --policy full
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
from lime_vs_baseline import MIB, compile_step, time_steps  # same folder (run as a script)

from lime_jax.model import ModelConfig, flops

VARIANTS = ("plain", "lime", "denseformer", "hyper_connections", "value_residual", "denseformer_scan")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=32)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=256)
  parser.add_argument("--policy", default="none")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
  args = parser.parse_args()

  base = ModelConfig(
    vocab_size=args.vocab,
    num_layers=args.depth,
    d_model=args.d_model,
    num_heads=args.heads,
    num_kv_heads=args.heads,
    ffn_dim=4 * args.d_model,
    remat_policy=args.policy,
  )
  cfgs = {v: dataclasses.replace(base, topology=v) for v in args.variants}
  print(
    f"device: {jax.devices()[0].device_kind} | jax {jax.__version__} | L={args.depth} D={args.d_model} "
    f"N=R={args.heads} B={args.batch} T={args.seq} vocab={args.vocab} remat={args.policy} fp32"
  )
  runs = {}
  for name, cfg in cfgs.items():
    runs[name] = compile_step(cfg, args.batch, args.seq)
    print(f"compiled {name} in {runs[name]['compile_s']:.1f}s", flush=True)
  time_steps(runs, args.steps, args.warmup)
  ref, ref_flops = runs["plain"], flops.forward_flops_per_token(cfgs["plain"], args.seq)
  print("| topology | step ms | t ratio | cpu ratio | F ratio | compile s | temp MiB | mem ratio |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for name, run in runs.items():
    f_ratio = flops.forward_flops_per_token(cfgs[name], args.seq) / ref_flops
    print(
      f"| {name} | {run['step_ms']:.1f} | {run['step_ms'] / ref['step_ms']:.3f} | "
      f"{run['cpu_ms'] / ref['cpu_ms']:.3f} | {f_ratio:.4f} | {run['compile_s']:.1f} | "
      f"{run['temp'] / MIB:.1f} | {run['temp'] / ref['temp']:.3f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
