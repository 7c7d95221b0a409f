"""lime_jax against its PyTorch peers, side by side: one full AdamW train step, each model in its own process.

  python benchmarks/vs_pytorch.py [--depths 8,64] [--rounds 1] [--official_lime PATH] [--variants ...]

Setting (that of the official PyTorch LIMe benchmark): d_model 256, 8 heads (8 kv heads), FFN 1024
(SwiGLU), vocabulary 256, tied embeddings, batch 16 x 128 tokens, fp32, remat off; the step is
forward, backward and AdamW; its time is the median of `--steps` steps after 2 warm-up steps.

Variants (`--variants`, default all that can run here):
  lime_jax_plain   lime_jax's LLaMA baseline (topology 'plain'), jitted train step of lime_jax.train.step;
  lime_jax_lime    lime_jax's LIMe (topology 'lime', kv router, the library's defaults);
  torch_llama      HF transformers `LlamaForCausalLM` (sdpa attention), eager PyTorch, torch.optim.AdamW;
  official_lime    the official PyTorch LIMe (github.com/corl-team/lime, `LIMeForCausalLM`), eager, when
                   `--official_lime` points at a checkout of it (not a dependency of lime_jax). Its code
                   was written for transformers 4.51: on 5.x the model's `_update_causal_mask` is gone,
                   and this script supplies it as "no mask" (sdpa then applies the causal mask itself).

Every (variant, depth) runs in a fresh process (`--worker`), so peak RSS (the process's ru_maxrss: the
interpreter, the libraries and the model) and thread pools are its own; rounds interleave the variants.
All processes run with the same environment; on Linux / glibc with THP mode `madvise` that includes
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which lime_jax's entry points set for themselves
(lime_jax/runtime/host_memory.py; `LIME_JAX_HUGE_PAGES=0` runs every process without it). Each worker
also measures a 2048^2 fp32 matmul in its framework, so the table shows both backends' matmul peaks
from the same run. Prints one markdown table and the ratios (docs/benchmarks.md records a run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D_MODEL, HEADS, FFN, VOCAB = 256, 8, 1024, 256
VARIANTS = ("lime_jax_plain", "lime_jax_lime", "torch_llama", "official_lime")


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _time_steps(step, steps: int) -> tuple[list[float], float]:
  """Runs step() twice as warm-up (the first includes any compilation), then `steps` timed times."""
  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return times, first_s


def lime_jax_train_step(topology: str, depth: int, batch: int, seq: int):
  """lime_jax's jitted train step (lime_jax.train.step, the default optimizer) at this setting:
  (step, state, batch, number of parameters)."""
  import jax

  from lime_jax.config import default_config
  from lime_jax.model import Transformer, init_params
  from lime_jax.tools import bench
  from lime_jax.train import optimizer as opt_lib
  from lime_jax.train import step as step_lib

  cfg = bench.model_config(depth, D_MODEL, HEADS, VOCAB, tie_embeddings=True, topology=topology)
  train_cfg = default_config().train
  params = init_params(cfg, jax.random.key(0))
  optimizer = opt_lib.make_optimizer(train_cfg, params)
  train_step = jax.jit(
    step_lib.make_train_step(Transformer(cfg), optimizer, opt_lib.lr_schedule(train_cfg)), donate_argnums=(0,)
  )
  n_params = sum(x.size for x in jax.tree.leaves(params))
  state = step_lib.init_train_state(params, optimizer)
  return train_step, state, bench.random_batch(cfg, batch, seq), n_params


def llama_config(depth: int, seq: int):
  """The HF `LlamaConfig` of this setting (sdpa attention), for HF's Llama and the official LIMe."""
  from transformers import LlamaConfig

  cfg = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=D_MODEL,
    intermediate_size=FFN,
    num_hidden_layers=depth,
    num_attention_heads=HEADS,
    num_key_value_heads=HEADS,
    tie_word_embeddings=True,
    max_position_embeddings=max(seq, 256),
    attention_bias=False,
  )
  cfg._attn_implementation = "sdpa"
  return cfg


def _jax_worker(variant: str, depth: int, batch: int, seq: int, steps: int) -> dict:
  import jax

  from lime_jax.runtime import peak_flops

  topology = "lime" if variant == "lime_jax_lime" else "plain"
  train_step, state, data, n_params = lime_jax_train_step(topology, depth, batch, seq)
  holder = {"state": state}

  def step():
    holder["state"], metrics = train_step(holder["state"], data)
    jax.block_until_ready(metrics)

  times, first_s = _time_steps(step, steps)
  return {
    "times": times,
    "first_step_s": first_s,
    "params": int(n_params),
    "peak_rss_gib": _peak_rss_gib(),
    "matmul_gflops": peak_flops.measure_matmul_peak(n=2048) / 1e9,
    "framework": f"jax {jax.__version__}",
  }


def _torch_matmul_gflops(torch) -> float:
  a = torch.randn(2048, 2048)
  b = torch.randn(2048, 2048)
  a @ b
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
  return 2 * 2048**3 / statistics.median(times) / 1e9


def _torch_worker(variant: str, depth: int, batch: int, seq: int, steps: int, official_lime: str) -> dict:
  import torch
  from transformers import LlamaForCausalLM

  torch.manual_seed(0)
  cfg = llama_config(depth, seq)
  if variant == "official_lime":
    sys.path[:0] = [official_lime, os.path.join(official_lime, "src")]
    import lm.lime as official  # noqa: PLC0415 (the official checkout, on the path only here)
    from config import LIMeConfig  # noqa: PLC0415

    if not hasattr(official.LIMeModel, "_update_causal_mask"):  # transformers >= 5
      official.LIMeModel._update_causal_mask = lambda self, *args, **kwargs: None
    model = official.LIMeForCausalLM(cfg, LIMeConfig())
  else:
    model = LlamaForCausalLM(cfg)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
  tokens = torch.randint(0, VOCAB, (batch, seq + 1))
  inputs, targets = tokens[:, :-1], tokens[:, 1:].contiguous()

  def step():
    loss = model(input_ids=inputs, labels=targets).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  times, first_s = _time_steps(step, steps)
  return {
    "times": times,
    "first_step_s": first_s,
    "params": sum(p.numel() for p in model.parameters()),
    "peak_rss_gib": _peak_rss_gib(),
    "matmul_gflops": _torch_matmul_gflops(torch),
    "framework": f"torch {torch.__version__} (threads {torch.get_num_threads()})",
  }


def worker(args: argparse.Namespace) -> None:
  variant, depth = args.worker, args.depth
  if variant.startswith("lime_jax"):
    out = _jax_worker(variant, depth, args.batch, args.seq, args.steps)
  else:
    out = _torch_worker(variant, depth, args.batch, args.seq, args.steps, args.official_lime)
  out.update(variant=variant, depth=depth, step_s=statistics.median(out["times"]))
  print("RESULT " + json.dumps(out), flush=True)


def _available(variant: str, official_lime: str | None) -> str | None:
  """Why a variant cannot run here, or None."""
  import importlib.util

  if variant.startswith("lime_jax"):
    return None
  for module in ("torch", "transformers"):
    if importlib.util.find_spec(module) is None:
      return f"{module} is not installed"
  if variant == "official_lime":
    if not official_lime:
      return "--official_lime not given"
    if not os.path.exists(os.path.join(official_lime, "src", "lm", "lime.py")):
      return f"{official_lime} holds no src/lm/lime.py"
    if importlib.util.find_spec("einops") is None:
      return "the official LIMe needs einops"
  return None


def _env() -> dict[str, str]:
  sys.path.insert(0, ROOT)
  from lime_jax.runtime import host_memory

  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
  env = host_memory.huge_pages_env(env) or env
  env[host_memory.OPT_OUT] = "0"  # the workers keep exactly this environment
  return env


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", default="8,64")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the median is reported")
  parser.add_argument("--official_lime", default=None, help="a checkout of github.com/corl-team/lime")
  parser.add_argument("--json", default=None, help="also write every worker's result to this file")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--depth", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  if args.official_lime:
    args.official_lime = os.path.abspath(args.official_lime)
  depths = [int(d) for d in args.depths.split(",")]
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
  runnable = []
  for v in variants:
    reason = _available(v, args.official_lime)
    if reason:
      print(f"skip {v}: {reason}")
    else:
      runnable.append(v)
  env = _env()
  print(
    f"{platform.node()} | {os.cpu_count()} cores | batch {args.batch} x {args.seq} | d_model {D_MODEL}, "
    f"{HEADS} heads, FFN {FFN}, vocab {VOCAB}, fp32 | median of {args.steps} steps x {args.rounds} round(s) "
    f"| GLIBC_TUNABLES={env.get('GLIBC_TUNABLES', '')!r}",
    flush=True,
  )
  results: dict[tuple[str, int], list[dict]] = {}
  for _ in range(args.rounds):
    for depth in depths:
      for v in runnable:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", v, "--depth", str(depth)]
        cmd += ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
        if args.official_lime:
          cmd += ["--official_lime", args.official_lime]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
          print(f"{v} depth {depth} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
          continue
        r = json.loads(lines[-1][len("RESULT ") :])
        results.setdefault((v, depth), []).append(r)
        print(
          f"  {v:15s} L={depth:3d}: {r['step_s'] * 1e3:8.1f} ms/step, peak RSS {r['peak_rss_gib']:.2f} GiB",
          flush=True,
        )
  if args.json:
    with open(args.json, "w") as f:
      json.dump({f"{v}@{d}": rs for (v, d), rs in results.items()}, f, indent=1)
  print_table(results, depths, runnable, args.batch * args.seq)


def print_table(results: dict, depths: list[int], variants: list[str], tokens: int) -> None:
  """The markdown table and the ratios of the issue's goals."""

  def med(v: str, d: int, key: str) -> float | None:
    rs = results.get((v, d))
    return statistics.median(r[key] for r in rs) if rs else None

  print(
    "\n| depth | variant | params | ms / step | tokens / s | peak RSS (GiB) | matmul GFLOP/s | framework |"
  )
  print("|---:|---|---:|---:|---:|---:|---:|---|")
  for d in depths:
    for v in variants:
      step_s = med(v, d, "step_s")
      if step_s is None:
        continue
      r = results[(v, d)][0]
      print(
        f"| {d} | {v} | {r['params']:,} | {step_s * 1e3:.0f} | {tokens / step_s:,.0f} | "
        f"{med(v, d, 'peak_rss_gib'):.2f} | {med(v, d, 'matmul_gflops'):.0f} | {r['framework']} |"
      )
  print("\n| depth | ratio | value | goal |")
  print("|---:|---|---:|---|")
  for d in depths:
    pairs = [
      ("lime_jax plain / torch Llama, tokens/s", "torch_llama", "lime_jax_plain", "step_s", ">= 1.0"),
      ("lime_jax LIMe / official LIMe, tokens/s", "official_lime", "lime_jax_lime", "step_s", ">= 1.5 at 64"),
      ("lime_jax LIMe / lime_jax plain, step time", "lime_jax_lime", "lime_jax_plain", "step_s", ""),
      (
        "lime_jax LIMe / official LIMe, peak RSS",
        "lime_jax_lime",
        "official_lime",
        "peak_rss_gib",
        "<= 0.4 at 64",
      ),
    ]
    for name, num_v, den_v, key, goal in pairs:
      num, den = med(num_v, d, key), med(den_v, d, key)
      if num is not None and den is not None:
        print(f"| {d} | {name} | {num / den:.2f} | {goal} |")


if __name__ == "__main__":
  main()
