"""One-GPU device check (issue 32, item 4): a ~350M LLaMA-style model, plain and LIMe, bf16 compute, with
cuDNN and with XLA attention; under 8 minutes on one H100 / H200.

  bash benchmarks/device_check.sh [--batch=8] [--remat=none] [--out=device_check.json]
  python benchmarks/device_check.py --quick          # tiny model: a CPU smoke test (cudnn rows skipped)

Prints, as markdown tables: the devices and versions; per (attention impl, topology) the compile time,
the median time of a full train step (forward, backward, AdamW; lime_jax/train/step.py, the optimizer of
default_config().train), tokens/s, MFU (percent, lime_jax/model/flops.py's convention against the bf16
peak of --peak_tflops on GPU, a measured fp32 matmul on CPU) and peak device memory; the LIMe / plain
time and memory ratios per impl; and the cuDNN logits against the XLA logits (same params and batch).
Every number also goes to the JSON of --out (relative to the cwd; the .sh wrapper runs from the repo
root), rewritten after each configuration so a killed run keeps what it measured.

Each configuration runs in its own process: `peak_bytes_in_use` is a process-lifetime maximum (one process
for all would report the largest so far), and a crash, a hang (--config_timeout_s) or an OOM loses that
row only. A configuration that runs out of memory is retried once with --oom_remat (default 'full'; its
row says so). --budget_s bounds the whole run: a configuration that would start past it is skipped.

Default shape (342M parameters, tied embeddings): d_model 1024, 24 layers, 16 heads (head dim 64),
SwiGLU ffn 2816 (LLaMA's 8/3 * d_model rounded up to 256), vocab 32768, seq 2048, batch 8, fp32
params with bf16 compute. --remat=none saves every activation: the XLA attention path keeps the
[B, N, T, T] probabilities of every layer (about 1 GiB each in bf16 at batch 8), hence the OOM retry.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

# The parent process only lists devices (children do the work): it must not preallocate the GPU.
_CHILD_ENV = dict(os.environ)
if "--child" not in sys.argv:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lime_jax.config import default_config  # noqa: E402
from lime_jax.model import ModelConfig, Transformer, init_params  # noqa: E402
from lime_jax.model import flops as flops_lib  # noqa: E402
from lime_jax.runtime import peak_flops  # noqa: E402
from lime_jax.tools import bench  # noqa: E402
from lime_jax.train import optimizer as opt_lib  # noqa: E402
from lime_jax.train import step as step_lib  # noqa: E402

GIB = 2**30
H100_BF16_TFLOPS = 989.0  # H100 SXM dense bf16 (data sheet; lime_jax/runtime/peak_flops.py)
GOAL_RATIO = 1.05  # LIMe step time <= 1.05x plain
GOAL_MFU_PCT = 45.0  # plain >= 45% MFU on one H100

# Shape presets: the ~350M model and the CPU smoke test; each value can be overridden by its flag.
PRESETS = {
  "full": dict(
    d_model=1024,
    layers=24,
    heads=16,
    ffn=2816,
    vocab=32768,
    seq=2048,
    batch=8,
    warmup=2,
    steps=5,
    compare_batch=2,
  ),
  "quick": dict(
    d_model=64, layers=2, heads=4, ffn=256, vocab=512, seq=64, batch=2, warmup=1, steps=1, compare_batch=2
  ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny model (CPU smoke test)")
  for name in PRESETS["full"]:
    parser.add_argument(f"--{name}", type=int, default=None, help=f"default {PRESETS['full'][name]}")
  parser.add_argument("--remat", default="none", choices=("none", "full", "save_dots"))
  parser.add_argument("--oom_remat", default="full", help="remat of the one retry after an OOM; '': none")
  parser.add_argument("--impls", default="cudnn,xla", help="attention impls, in order")
  parser.add_argument("--topologies", default="plain,lime", help="the first is the ratios' baseline")
  parser.add_argument("--peak_tflops", type=float, default=H100_BF16_TFLOPS, help="GPU bf16 peak per chip")
  parser.add_argument("--budget_s", type=float, default=450.0, help="no configuration starts after this")
  parser.add_argument("--config_timeout_s", type=float, default=200.0, help="per configuration process")
  parser.add_argument("--out", default="device_check.json")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: a JSON job
  parser.add_argument("--child_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  preset = PRESETS["quick" if args.quick else "full"]
  for name, value in preset.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def model_cfg(
  shape: dict[str, int], topology: str, impl: str, remat: str, dtype: str = "bfloat16"
) -> ModelConfig:
  """bench.model_config (ffn 4 x d_model, no GQA) with the shape's ffn and the run's options."""
  cfg = bench.model_config(
    shape["layers"],
    shape["d_model"],
    shape["heads"],
    shape["vocab"],
    topology=topology,
    attention_impl=impl,
    compute_dtype=dtype,
    remat_policy=remat,
  )
  return dataclasses.replace(cfg, ffn_dim=shape["ffn"])


def param_count(cfg: ModelConfig) -> int:
  shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
  return int(sum(x.size for x in jax.tree.leaves(shapes)))


def device_info() -> dict[str, Any]:
  import jaxlib  # pylint: disable=import-outside-toplevel

  devices = jax.devices()
  info = {
    "backend": jax.default_backend(),
    "devices": [repr(d) for d in devices],
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
  }
  try:
    info["platform_version"] = devices[0].client.platform_version
  except Exception:  # pylint: disable=broad-except  (an attribute of the runtime, not of the API)
    pass
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel

    if cuda_versions is not None:
      info["cudnn"] = cuda_versions.cudnn_get_version()
  except Exception:  # pylint: disable=broad-except
    pass
  stats = devices[0].memory_stats()
  if stats and "bytes_limit" in stats:
    info["bytes_limit_gib"] = stats["bytes_limit"] / GIB
  try:
    info["environment"] = jax.print_environment_info(return_string=True)
  except Exception:  # pylint: disable=broad-except
    pass
  return info


# ---------------------------------------------------------------------------------------------------------
# Child jobs (one process each).


def train_job(job: dict[str, Any]) -> dict[str, Any]:
  """Compiles the real train step and times `steps` steps after `warmup`; memory of this process only.

  bench.time_train_step's loop, with a warm-up count, every step's time and the losses (the same init
  and batch under both attention impls: their losses should agree)."""
  shape = job["shape"]
  cfg = model_cfg(shape, job["topology"], job["impl"], job["remat"])
  batch, seq = shape["batch"], shape["seq"]
  train_cfg = default_config().train
  params = init_params(cfg, jax.random.key(0))
  optimizer = opt_lib.make_optimizer(train_cfg, params)
  state = step_lib.init_train_state(params, optimizer)
  data = bench.random_batch(cfg, batch, seq)
  train_step = step_lib.make_train_step(Transformer(cfg), optimizer, opt_lib.lr_schedule(train_cfg))
  step_fn = jax.jit(train_step, donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  analysis = compiled.memory_analysis()
  times, losses = [], []
  for _ in range(shape["warmup"] + shape["steps"]):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics["loss"]))
  timed = times[shape["warmup"] :]
  out = {
    "compile_s": compile_s,
    "step_s": statistics.median(timed),
    "step_times_s": times,
    "losses": losses,
    "finite": all(map(math.isfinite, losses)),
  }
  if analysis is not None:
    for key in ("temp", "argument", "output", "alias", "generated_code"):
      out[f"{key}_bytes"] = int(getattr(analysis, f"{key}_size_in_bytes", 0))
  stats = jax.devices()[0].memory_stats()
  if stats:
    out["memory_stats"] = {k: int(v) for k, v in stats.items() if isinstance(v, int)}
  return out


def compare_job(job: dict[str, Any]) -> dict[str, Any]:
  """Logits of the plain model under (dtype, impl) pairs, on one init and one batch."""
  shape = job["shape"]
  base = model_cfg(shape, "plain", "xla", "none", "float32")
  params = init_params(base, jax.random.key(0))
  data = bench.random_batch(base, shape["compare_batch"], shape["seq"], seed=1)
  logits: dict[tuple[str, str], jax.Array] = {}

  def forward(dtype: str, impl: str) -> jax.Array:
    if (dtype, impl) not in logits:
      cfg = dataclasses.replace(base, compute_dtype=dtype, attention_impl=impl)
      fn = jax.jit(lambda p, x: Transformer(cfg).apply({"params": p}, x)[0])
      logits[dtype, impl] = jax.block_until_ready(fn(params, data["inputs"]))
    return logits[dtype, impl]

  @jax.jit
  def diff(a_BTV: jax.Array, b_BTV: jax.Array, targets_BT: jax.Array) -> dict[str, jax.Array]:
    d = jnp.abs(a_BTV - b_BTV)

    def ce(x_BTV):
      logp = jax.nn.log_softmax(x_BTV)
      return -jnp.mean(jnp.take_along_axis(logp, targets_BT[..., None], axis=-1))

    return {
      "max_abs_diff": d.max(),
      "mean_abs_diff": d.mean(),
      "max_abs_logit": jnp.abs(b_BTV).max(),
      "argmax_agree": jnp.mean(a_BTV.argmax(-1) == b_BTV.argmax(-1)),
      "ce_a": ce(a_BTV),
      "ce_b": ce(b_BTV),
    }

  rows = []
  pairs = [  # (a, b): the bf16 xla vs fp32 xla row is the noise floor the cudnn rows compare with.
    (("bfloat16", "cudnn"), ("bfloat16", "xla")),
    (("bfloat16", "xla"), ("float32", "xla")),
    (("bfloat16", "cudnn"), ("float32", "xla")),
    (("float32", "cudnn"), ("float32", "xla")),
  ]
  for a, b in pairs:
    row = {"a": "/".join(a), "b": "/".join(b)}
    try:
      row.update({k: float(v) for k, v in diff(forward(*a), forward(*b), data["targets"]).items()})
    except Exception as e:  # pylint: disable=broad-except  (e.g. the cuDNN kernel refuses fp32)
      row["error"] = _short_error(e)
    rows.append(row)
  return {"rows": rows}


def _short_error(e: BaseException, limit: int = 400) -> str:
  text = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
  return text if len(text) <= limit else text[:limit] + " ..."


def child_main(args: argparse.Namespace) -> None:
  job = json.loads(args.child)
  try:
    result = {"train": train_job, "compare": compare_job}[job["kind"]](job)
  except Exception as e:  # pylint: disable=broad-except  (reported by the parent, which goes on)
    traceback.print_exc()
    result = {"error": _short_error(e)}
  with open(args.child_out, "w") as f:
    json.dump(result, f)


# ---------------------------------------------------------------------------------------------------------
# Parent.


def spawn(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
  """Runs `job` in a fresh process; its result, or {'error': ...} after a crash or a timeout."""
  with tempfile.TemporaryDirectory() as tmp:
    out_path = os.path.join(tmp, "result.json")
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={json.dumps(job)}", f"--child_out={out_path}"]
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, env=_CHILD_ENV, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - t0}
    wall_s = time.perf_counter() - t0
    if os.path.exists(out_path):
      with open(out_path) as f:
        result = json.load(f)
    else:
      result = {"error": f"process exited with {proc.returncode} and no result"}
    if "error" in result:
      result["stderr_tail"] = proc.stderr[-3000:]
    result["wall_s"] = wall_s
    return result


def is_oom(result: dict[str, Any]) -> bool:
  text = (result.get("error", "") + result.get("stderr_tail", "")).lower()
  return "error" in result and ("resource_exhausted" in text or "out of memory" in text)


def memory_of(result: dict[str, Any]) -> tuple[float, str]:
  """(GiB, source): the process's peak_bytes_in_use, else the executable's temp size."""
  peak = result.get("memory_stats", {}).get("peak_bytes_in_use")
  if peak:
    return peak / GIB, "peak_bytes_in_use"
  if "temp_bytes" in result:
    return result["temp_bytes"] / GIB, "memory_analysis temp"
  return float("nan"), ""


def table(headers: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt(x: Any, spec: str) -> str:
  return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def write_json(path: str, report: dict[str, Any]) -> None:
  with open(path + ".partial", "w") as f:
    json.dump(report, f, indent=1, default=str)
  os.replace(path + ".partial", path)


def main(args: argparse.Namespace) -> None:
  t_start = time.perf_counter()
  shape = {name: getattr(args, name) for name in PRESETS["full"]}
  impls, topologies = args.impls.split(","), args.topologies.split(",")
  info = device_info()
  on_gpu = info["backend"] == "gpu"
  if on_gpu:
    peak = args.peak_tflops * 1e12
    sheet, how = peak_flops.peak_flops_per_device()
    peak_label = f"--peak_tflops={args.peak_tflops:g} (bf16 dense; library: {sheet / 1e12:g} TFLOP/s, {how})"
  else:
    peak = peak_flops.measure_matmul_peak(n=512 if args.quick else 2048)
    peak_label = f"measured fp32 matmul on {info['device_kind']}: {peak / 1e9:.1f} GFLOP/s (no GPU)"
  report: dict[str, Any] = {
    "devices": info,
    "shape": shape,
    "options": {k: getattr(args, k) for k in ("quick", "remat", "oom_remat", "impls", "topologies")},
    "peak_flops": peak,
    "peak_label": peak_label,
    "params": {},
    "runs": [],
    "ratios": [],
    "compare": None,
  }
  print("## Devices\n")
  print(
    table(
      ["backend", "devices", "device_kind", "jax", "jaxlib", "platform", "memory (GiB)"],
      [
        [
          info["backend"],
          ", ".join(info["devices"]),
          info["device_kind"],
          info["jax"],
          info["jaxlib"],
          info.get("platform_version", "-").replace("\n", " "),
          fmt(info.get("bytes_limit_gib"), ".1f"),
        ]
      ],
    )
  )
  print(f"\nMFU peak: {peak_label}")
  for topo in topologies:
    report["params"][topo] = param_count(model_cfg(shape, topo, "xla", args.remat))
  print(
    f"\nShape: d_model {shape['d_model']}, {shape['layers']} layers, {shape['heads']} heads, ffn "
    f"{shape['ffn']} (SwiGLU), vocab {shape['vocab']}, tied embeddings, seq {shape['seq']}, batch "
    f"{shape['batch']}, bf16 compute / fp32 params, remat {args.remat}, {shape['warmup']} warm-up + "
    f"{shape['steps']} timed steps; params: " + ", ".join(f"{t} {n:,}" for t, n in report["params"].items()),
    flush=True,
  )
  write_json(args.out, report)

  def budget_left() -> float:
    return args.budget_s - (time.perf_counter() - t_start)

  def run_job(job: dict[str, Any], label: str) -> dict[str, Any]:
    if budget_left() < 10:
      return {"error": f"skipped: time budget (--budget_s={args.budget_s:g}) spent"}
    result = spawn(job, min(args.config_timeout_s, budget_left()))
    status = "ok" if "error" not in result else result["error"][:200]
    print(f"  {label}: {status} ({result.get('wall_s', 0):.0f} s)", file=sys.stderr, flush=True)
    return result

  print("\nRunning (one process per configuration):", file=sys.stderr, flush=True)
  for impl in impls:
    for topo in topologies:
      run = {"impl": impl, "topology": topo, "remat": args.remat}
      if impl == "cudnn" and not on_gpu:
        run["error"] = "skipped: no GPU"
      else:
        job = {"kind": "train", "shape": shape, "topology": topo, "impl": impl, "remat": args.remat}
        result = run_job(job, f"{topo} / {impl} / remat {args.remat}")
        if is_oom(result) and args.oom_remat and args.oom_remat != args.remat:
          run["oom_with_remat"] = args.remat
          run["remat"] = job["remat"] = args.oom_remat
          result = run_job(job, f"{topo} / {impl} / remat {args.oom_remat} (retry after OOM)")
        run.update(result)
      if "error" not in run:
        cfg = model_cfg(shape, topo, impl, run["remat"])
        run["flops_per_step"] = flops_lib.train_flops_per_step(cfg, shape["batch"], shape["seq"])
        run["tokens_per_s"] = shape["batch"] * shape["seq"] / run["step_s"]
        run["mfu_pct"] = 100.0 * run["flops_per_step"] / run["step_s"] / peak
        run["memory_gib"], run["memory_source"] = memory_of(run)
      report["runs"].append(run)
      write_json(args.out, report)

  if not on_gpu or "cudnn" not in impls:
    report["compare"] = {"error": "skipped: no GPU" if not on_gpu else "skipped: cudnn not in --impls"}
  elif shape["compare_batch"] <= 0:
    report["compare"] = {"error": "skipped: --compare_batch=0"}
  else:
    report["compare"] = run_job({"kind": "compare", "shape": shape}, "logits cudnn vs xla")
  write_json(args.out, report)

  runs = {(r["impl"], r["topology"]): r for r in report["runs"]}
  base_topo = topologies[0]
  for impl in impls:
    base = runs.get((impl, base_topo), {})
    for topo in topologies[1:]:
      other = runs.get((impl, topo), {})
      ratio: dict[str, Any] = {"impl": impl, "topology": topo, "baseline": base_topo}
      missing = [r.get("error", "") for r in (base, other) if not r or "error" in r]
      if missing:
        ratio["error"] = missing[0] or "missing run"
      else:
        ratio["time_ratio"] = other["step_s"] / base["step_s"]
        ratio["memory_ratio"] = other["memory_gib"] / base["memory_gib"]
        ratio["same_remat"] = other["remat"] == base["remat"]
        ratio["time_goal_met"] = ratio["time_ratio"] <= GOAL_RATIO
        ratio["baseline_mfu_pct"] = base["mfu_pct"]
        ratio["mfu_goal_met"] = base["mfu_pct"] >= GOAL_MFU_PCT
      report["ratios"].append(ratio)
  report["total_s"] = time.perf_counter() - t_start
  write_json(args.out, report)

  print("\n## Train step (forward, backward, AdamW)\n")
  rows = []
  for r in report["runs"]:
    if "error" in r:
      rows.append([r["impl"], r["topology"], r["remat"], r["error"][:160]] + ["-"] * 7)
      continue
    losses = r["losses"]
    rows.append(
      [
        r["impl"],
        r["topology"],
        r["remat"] + (f" (OOM with {r['oom_with_remat']})" if "oom_with_remat" in r else ""),
        fmt(r["compile_s"], ".1f"),
        fmt(r["step_s"] * 1e3, ".1f"),
        fmt(r["tokens_per_s"], ",.0f"),
        fmt(r["mfu_pct"], ".1f"),
        fmt(r["memory_gib"], ".3g") + ("" if r["memory_source"] == "peak_bytes_in_use" else " (temp)"),
        fmt(r.get("temp_bytes", float("nan")) / GIB, ".3g"),
        f"{losses[0]:.4f} / {losses[-1]:.4f}",
        fmt(min(r["step_times_s"][shape["warmup"] :]) * 1e3, ".1f"),
      ]
    )
  print(
    table(
      [
        "attention",
        "topology",
        "remat",
        "compile (s)",
        "step (ms, median)",
        "tokens/s",
        "MFU (%)",
        "peak memory (GiB)",
        "XLA temp (GiB)",
        "loss first / last",
        "step (ms, min)",
      ],
      rows,
    )
  )
  print(f"\nMFU against {peak_label}; FLOPs: lime_jax/model/flops.py (3 x forward, causal-halved attention).")

  print(
    f"\n## LIMe / plain (goals: time <= {GOAL_RATIO}x plain; plain >= {GOAL_MFU_PCT:g}% MFU on one H100)\n"
  )
  rows = []
  for r in report["ratios"]:
    if "error" in r:
      rows.append([r["impl"], f"{r['topology']} / {r['baseline']}", r["error"], "-", "-", "-"])
      continue
    rows.append(
      [
        r["impl"],
        f"{r['topology']} / {r['baseline']}" + ("" if r["same_remat"] else " (different remat)"),
        f"{r['time_ratio']:.3f}",
        "met" if r["time_goal_met"] else "NOT met",
        f"{r['memory_ratio']:.3f}",
        f"{r['baseline_mfu_pct']:.1f}% ({'met' if r['mfu_goal_met'] else 'NOT met'})",
      ]
    )
  print(table(["attention", "ratio", "step time", f"<= {GOAL_RATIO}x", "peak memory", "plain MFU"], rows))

  print("\n## Logits: cuDNN against XLA (plain model, same params and batch)\n")
  compare = report["compare"]
  if "error" in compare:
    print(compare["error"][:300])
  else:
    rows = []
    for r in compare["rows"]:
      if "error" in r:
        rows.append([r["a"], r["b"], r["error"][:160], "-", "-", "-", "-"])
      else:
        rows.append(
          [
            r["a"],
            r["b"],
            f"{r['max_abs_diff']:.3g}",
            f"{r['mean_abs_diff']:.3g}",
            f"{r['max_abs_logit']:.3g}",
            f"{100 * r['argmax_agree']:.2f}",
            f"{r['ce_a']:.5f} / {r['ce_b']:.5f}",
          ]
        )
    print(
      table(
        ["a", "b", "max abs diff", "mean abs diff", "max abs logit (b)", "argmax agree (%)", "CE a / b"], rows
      )
    )
  print(f"\nTotal {report['total_s']:.0f} s; JSON: {os.path.abspath(args.out)}")


if __name__ == "__main__":
  parsed = parse_args()
  if parsed.child:
    child_main(parsed)
  else:
    main(parsed)
