"""Where one train step's time and saved activations go, by category: lime_jax and a hand-written
scanned JAX LLaMA (XLA's per-op trace), and HF transformers' Llama in eager PyTorch (torch.profiler), at
the setting of benchmarks/vs_pytorch.py.

  python benchmarks/profile_step.py [--depth 8] [--frameworks lime_jax,handwritten_jax,torch] [--top 15]

lime_jax: the jitted train step (forward, backward, AdamW) is traced with `jax.profiler.trace` for 3
steps; every XLA op of the trace is put into a category from its HLO (opcode, fused computation and
the op_name of its source), and its time summed. On CPU the ops of one step can overlap (XLA runs
independent ops concurrently), so the categories sum to more than the step's wall time. torch: the same
step under `torch.profiler`, self CPU time per aten op, categorised by op name.

Saved activations per layer: jax, the residuals autodiff keeps for the backward pass of one Block
(`saved_residuals`; parameters excluded); torch, the bytes of the tensors autograd saves during one
decoder layer's forward (`saved_tensors_hooks`, storage-deduplicated; parameters excluded).
docs/benchmarks.md ("Where a train step's time goes") records a run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import vs_pytorch  # noqa: E402  (the shared setting)

B, T = 16, 128


def _hlo_ops(hlo: str) -> tuple[dict, dict]:
  """{instruction: (opcode, called computation, op_name)} and {computation: body text} of an HLO module."""
  comps, cur = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if m:
      cur = m.group(1)
      comps[cur] = []
    elif cur:
      comps[cur].append(line)
  ops = {}
  for line in hlo.splitlines():
    m = re.match(r"\s+(?:ROOT )?%(\S+) = \S+ (\S+?)\(", line)
    if m:
      calls = re.search(r"calls=%([\w.\-]+)", line)
      op_name = re.search(r'op_name="([^"]*)"', line)
      ops[m.group(1)] = (m.group(2), calls.group(1) if calls else None, op_name.group(1) if op_name else "")
  return ops, {k: "\n".join(v) for k, v in comps.items()}


def jax_category(opcode: str, body: str, op_name: str) -> str | None:
  """The category of one XLA op (None: a control-flow op whose time includes its body's ops)."""
  if opcode in ("while", "conditional", "call"):
    return None
  if "__ynn_fusion" in body or "__xnn_fusion" in body or opcode in ("dot", "custom-call") or " dot(" in body:
    return "matmuls (dots)"
  if "/while" not in op_name:  # the layers run inside the scan's while loop
    return "optimizer, loss, embedding (outside the layer scan)"
  if " transpose(" in body or opcode in ("transpose", "copy") or " copy(" in body:
    return "transposes / copies / layout"
  if "dynamic-update-slice" in body or "dynamic-slice" in body or opcode.startswith("dynamic"):
    return "scan bookkeeping (dynamic slices / updates)"
  if opcode == "broadcast" or (opcode == "fusion" and body.count("\n") <= 2 and "broadcast(" in body):
    return "buffer initialisation (broadcasts)"
  if re.search(r"attention|softmax|logsumexp|_where|exp\b", op_name):
    return "attention softmax / mask"
  if re.search(r"rms|norm|rope|rotate|cos|sin", op_name, re.I):
    return "norms and RoPE"
  if re.search(r"mlp|silu|gelu|gated", op_name):
    return "SwiGLU / MLP elementwise"
  return "other elementwise"


def lime_jax_step(depth: int):
  """lime_jax's train step at the setting of vs_pytorch.py: (jitted step, state, batch)."""
  return vs_pytorch.lime_jax_train_step("plain", depth, B, T)[:3]


def profile_jax(depth: int, builder=lime_jax_step, steps: int = 3, top: int = 0, saved: bool = True) -> dict:
  """Step time and op time by category of a jitted JAX step built by `builder(depth)`."""
  import jax

  fn, state, data = builder(depth)
  compiled = fn.lower(state, data).compile()
  for _ in range(2):
    state, m = compiled(state, data)
    jax.block_until_ready(m)
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, m = compiled(state, data)
        jax.block_until_ready(m)
    (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      per_op[e["name"]] += e.get("dur", 0) / steps / 1e3  # ms per step
  ops, comps = _hlo_ops(compiled.as_text())
  categories = collections.Counter()
  for name, ms in per_op.items():
    if name in ops:
      opcode, calls, op_name = ops[name]
      cat = jax_category(opcode, comps.get(calls, "") if calls else "", op_name)
      if cat:
        categories[cat] += ms
  if top:
    for name, ms in per_op.most_common(top):
      if name in ops:
        print(f"  {ms:8.1f} ms  {name:32s} {ops[name][2][-100:]}")
  out = {
    "step_ms": statistics.median(times) * 1e3,
    "categories": dict(categories),
    "saved_mib_per_layer": None,
  }
  if saved:
    out.update(jax_saved_per_layer())
  return out


def handwritten_jax_step(depth: int):
  """A hand-written scanned LLaMA in plain JAX (einsum projections, RMSNorm, RoPE, SwiGLU,
  `jax.nn.dot_product_attention`, optax AdamW), the reference that shows what lime_jax adds to a step:
  (jitted step, state, batch)."""
  import jax
  import jax.numpy as jnp
  import optax

  D, N, F, V = vs_pytorch.D_MODEL, vs_pytorch.HEADS, vs_pytorch.FFN, vs_pytorch.VOCAB
  H = D // N
  keys = iter(jax.random.split(jax.random.key(0), 8))

  def normal(*shape):
    return 0.02 * jax.random.normal(next(keys), shape)

  params = {
    "embed": normal(V, D),
    "layers": {
      "attn_norm": jnp.ones((depth, D)),
      "wqkv": normal(depth, D, 3, N, H),
      "wo": normal(depth, N, H, D),
      "mlp_norm": jnp.ones((depth, D)),
      "w_gate": normal(depth, D, F),
      "w_up": normal(depth, D, F),
      "w_down": normal(depth, F, D),
    },
    "final_norm": jnp.ones((D,)),
  }
  inv_freq = 1.0 / 10_000 ** (jnp.arange(0, H, 2) / H)
  angles = jnp.arange(T)[:, None] * inv_freq[None]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]

  def norm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w

  def rope(x):
    x1, x2 = x[..., : H // 2], x[..., H // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  def layer(h, p):
    qkv = jnp.einsum("btd,dknh->btknh", norm(h, p["attn_norm"]), p["wqkv"])
    q, k, v = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    h = h + jnp.einsum("btnh,nhd->btd", o, p["wo"])
    x = norm(h, p["mlp_norm"])
    gated = jax.nn.silu(jnp.einsum("btd,df->btf", x, p["w_gate"])) * jnp.einsum("btd,df->btf", x, p["w_up"])
    return h + jnp.einsum("btf,fd->btd", gated, p["w_down"]), None

  def loss_fn(params, tokens):
    h, _ = jax.lax.scan(layer, params["embed"][tokens[:, :-1]], params["layers"])
    logits = jnp.einsum("btd,vd->btv", norm(h, params["final_norm"]), params["embed"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  optimizer = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1)

  @jax.jit
  def step(state, tokens):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, V)
  return step, (params, optimizer.init(params)), tokens


def jax_saved_per_layer() -> dict:
  """Bytes autodiff keeps for one Block's backward pass (parameters excluded), by source line."""
  import jax
  import jax.numpy as jnp
  from jax._src.ad_checkpoint import saved_residuals

  from lime_jax.model.block import Block
  from lime_jax.model.tables import layer_tables
  from lime_jax.tools import bench

  cfg = bench.model_config(1, vs_pytorch.D_MODEL, vs_pytorch.HEADS, vs_pytorch.VOCAB, tie_embeddings=True)
  block = Block(cfg)
  h_BTD = jnp.zeros((B, T, cfg.d_model))
  tables = layer_tables(cfg, jnp.broadcast_to(jnp.arange(T), (B, T)))
  variables = block.init(jax.random.key(0), h_BTD, tables)
  saved = saved_residuals(lambda v, h: block.apply(v, h, tables)[0], variables, h_BTD)
  kept = [(a, src) for a, src in saved if not src.startswith("from the argument v")]
  total = sum(a.size * a.dtype.itemsize for a, _ in kept)
  return {"saved_mib_per_layer": total / 2**20, "saved": [(a.str_short(), src[:120]) for a, src in kept]}


TORCH_CATEGORIES = (
  ("matmuls (dots)", r"^aten::(mm|bmm|addmm|matmul|linear|baddbmm)$"),
  ("attention (sdpa kernels)", r"scaled_dot_product|flash_attention"),
  ("optimizer", r"_foreach_|lerp_|addcdiv_|addcmul_|^aten::sqrt$|Optimizer"),
  ("transposes / copies / layout", r"copy_|contiguous|clone|^aten::cat$|transpose|permute|as_strided|view"),
  ("norms and RoPE", r"pow|rsqrt|mean|neg"),
  ("SwiGLU / MLP elementwise", r"silu"),
  ("loss, embedding", r"nll|log_softmax|embedding|cross_entropy"),
  ("other elementwise", r"."),
)


def profile_torch(depth: int, steps: int = 3) -> dict:
  import torch
  from torch.profiler import ProfilerActivity, profile
  from transformers import LlamaForCausalLM

  torch.manual_seed(0)
  cfg = vs_pytorch.llama_config(depth, T)
  model = LlamaForCausalLM(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
  tokens = torch.randint(0, vs_pytorch.VOCAB, (B, T + 1))

  def step():
    model(input_ids=tokens[:, :-1], labels=tokens[:, 1:].contiguous()).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  times, _ = vs_pytorch._time_steps(step, 5)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  categories = collections.Counter()
  for evt in prof.key_averages():
    if not evt.key.startswith("aten::") and "Optimizer" not in evt.key:
      continue
    for cat, pattern in TORCH_CATEGORIES:
      if re.search(pattern, evt.key):
        categories[cat] += evt.self_cpu_time_total / steps / 1e3
        break
  # Saved activations of one decoder layer: storages autograd keeps, parameters excluded.
  param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
  storages: dict[int, int] = {}

  def pack(t):
    s = t.untyped_storage()
    if s.data_ptr() not in param_ptrs:
      storages[s.data_ptr()] = s.nbytes()
    return t

  layer = model.model.layers[0]
  h = torch.randn(B, T, cfg.hidden_size, requires_grad=True)
  position_ids = torch.arange(T)[None].expand(B, T)
  rope = model.model.rotary_emb(h, position_ids)
  with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    layer(h, position_embeddings=rope, attention_mask=None, position_ids=position_ids)
  return {
    "step_ms": statistics.median(times) * 1e3,
    "categories": dict(categories),
    "saved_mib_per_layer": sum(storages.values()) / 2**20,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=8)
  parser.add_argument(
    "--frameworks", default="lime_jax,handwritten_jax,torch", help="any of lime_jax, handwritten_jax, torch"
  )
  parser.add_argument("--top", type=int, default=0, help="also list the slowest XLA ops")
  parser.add_argument("--show_saved", action="store_true", help="list lime_jax's saved residuals")
  args = parser.parse_args()
  results = {}
  frameworks = args.frameworks.split(",")
  if "lime_jax" in frameworks:
    results["lime_jax"] = profile_jax(args.depth, top=args.top)
    if args.show_saved:
      for shape, src in results["lime_jax"]["saved"]:
        print(f"  {shape:28s} {src}")
  if "handwritten_jax" in frameworks:
    results["hand-written JAX"] = profile_jax(args.depth, handwritten_jax_step, top=args.top, saved=False)
  if "torch" in frameworks:
    results["torch Llama"] = profile_torch(args.depth)
  names = list(results)
  print(f"\ndepth {args.depth}, batch {B} x {T}, fp32; ms per step by category (summed op time)\n")
  print("| category | " + " | ".join(names) + " |")
  print("|---|" + "---:|" * len(names))
  cats = sorted(
    {c for r in results.values() for c in r["categories"]},
    key=lambda c: -max(r["categories"].get(c, 0) for r in results.values()),
  )
  for c in cats:
    cells = []
    for n in names:
      ms, total = results[n]["categories"].get(c, 0.0), sum(results[n]["categories"].values())
      cells.append(f"{ms:.0f} ({100 * ms / total:.0f}%)" if ms else "–")
    print(f"| {c} | " + " | ".join(cells) + " |")
  rows = {
    "sum of op times": lambda n: f"{sum(results[n]['categories'].values()):.0f}",
    "step wall time (median of 5)": lambda n: f"{results[n]['step_ms']:.0f}",
    "saved activations per layer (MiB)": lambda n: (
      "–" if results[n]["saved_mib_per_layer"] is None else f"{results[n]['saved_mib_per_layer']:.1f}"
    ),
  }
  for label, cell in rows.items():
    print(f"| {label} | " + " | ".join(cell(n) for n in names) + " |")


if __name__ == "__main__":
  main()
