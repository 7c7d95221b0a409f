"""Collective communication in one compiled train step, per device mesh (8 fake CPU devices).

  python benchmarks/comm_ops.py [--topology plain lime] [--json OUT.json]

Scaling efficiency on fake CPU devices means nothing (they share the same cores), so this reports what
the partitioner put into the step instead: for each mesh (data, fsdp, tensor), the all-reduce,
all-gather, reduce-scatter, all-to-all and collective-permute ops of the compiled HLO, with their
count and result bytes per step. Ops inside the layer scan's while loop execute once per layer; the
counts and bytes below are per executed step (static count x loop trip count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

if __name__ == "__main__":  # 8 fake CPU devices, before jax starts (not when imported by the tests)
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lime_jax import config as config_lib  # noqa: E402
from lime_jax.train import loop as train_lib  # noqa: E402

MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
}
_SHAPE = re.compile(r"\b(pred|[su]\d+|bf16|f16|f32|f64)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def bench_config(topology: str, mesh: tuple[int, int, int]):
  """A small model whose every dim divides every mesh: 4 layers, d 256, 8 heads, ffn 1024, vocab 256."""
  c = config_lib.default_config()
  c.model.update(
    num_layers=4, d_model=256, num_heads=8, num_kv_heads=8, ffn_dim=1024, vocab_size=256, topology=topology
  )
  c.data.update(task="arithmetic", seq_len=64)
  c.train.update(batch_size=16)
  c.eval.batch_size = 16
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  return c


def compiled_hlo(config) -> str:
  run = train_lib.build(config)
  abstract = jax.eval_shape(lambda: train_lib.create_state(run))
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, run.state_sharding
  )
  B, T = config.train.batch_size, config.data.seq_len
  batch = {
    k: jax.ShapeDtypeStruct(
      (B, T), jnp.int32 if k in ("inputs", "targets") else jnp.float32, sharding=run.batch_sharding
    )
    for k in ("inputs", "targets", "loss_mask", "answer_mask")
  }
  return train_lib.jit_train_step(run).lower(state, batch).compile().as_text()


def _computations(hlo: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
      comps[name] = []
    elif name is not None and line.strip() and line.strip() != "}":
      comps[name].append(line)
  return comps


def _multipliers(comps: dict[str, list[str]]) -> dict[str, int]:
  """How often each computation runs per step: a while body x its known trip count, others x 1."""
  mult = {"ENTRY": 1}
  stack = ["ENTRY"]
  while stack:
    comp = stack.pop()
    for line in comps.get(comp, []):
      callees = [(c, 1) for c in re.findall(r"(?:condition|calls|to_apply)=%?([\w.\-]+)", line)]
      body = re.search(r"body=%?([\w.\-]+)", line)
      if body:
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
        callees.append((body.group(1), int(trip.group(1)) if trip else 1))
      for callee, factor in callees:
        if callee in comps and callee not in mult:
          mult[callee] = mult[comp] * factor
          stack.append(callee)
  return mult


def count_collectives(hlo: str) -> dict[str, dict[str, float]]:
  """{op: {'count': executions per step, 'bytes': result bytes per step}}."""
  comps = _computations(hlo)
  mult = _multipliers(comps)
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  for comp, lines in comps.items():
    for line in lines:
      m = _OP.search(line)
      if not m or "-done(" in line:
        continue
      op, times = m.group(2), mult.get(comp, 1)
      size = sum(
        _DTYPE_BYTES[d] * math.prod(int(n) for n in dims.split(",") if n)
        for d, dims in _SHAPE.findall(m.group(1))
      )
      out[op]["count"] += times
      out[op]["bytes"] += times * size
  return out


def _fmt_bytes(n: float) -> str:
  return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n:.0f} B"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", nargs="+", default=["plain", "lime"])
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = []
  for topology in args.topology:
    for mesh in MESHES:
      counts = count_collectives(compiled_hlo(bench_config(topology, mesh)))
      rows.append({"topology": topology, "mesh": mesh, **counts})
      print(
        f"{topology} {mesh}: "
        + ", ".join(f"{op} {v['count']}x {_fmt_bytes(v['bytes'])}" for op, v in counts.items() if v["count"]),
        flush=True,
      )
  print("\n| topology | mesh (data, fsdp, tensor) | " + " | ".join(COLLECTIVES) + " |")
  print("|---|---|" + "---|" * len(COLLECTIVES))
  for r in rows:
    cells = [
      f"{r[op]['count']} / {_fmt_bytes(r[op]['bytes'])}" if r[op]["count"] else "-" for op in COLLECTIVES
    ]
    print(f"| {r['topology']} | {r['mesh']} | " + " | ".join(cells) + " |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
