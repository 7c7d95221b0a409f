"""The sharded loader (lime_jax/hf/sharded.py) in a fresh process with fake CPU devices (XLA_FLAGS must be
set before jax is imported). Writes one JSON file that tests/integration/test_sharded_load.py and
tests/e2e/test_sharded_load_scale.py read.

  python tests/helpers/sharded_load_worker.py check OUT.json WORK_DIR
      8 devices: a random Llama (safetensors in 2 shards, bf16 too) and its GGUF file loaded on several
      meshes: each leaf's sharding, the bytes each device holds, the bytes read, logits vs the one-device
      load, upcycling into LIMe.
  python tests/helpers/sharded_load_worker.py rss OUT.json FOLDER {sharded,replicated} CHUNK_MIB
      8 devices: peak host memory (VmHWM over the RSS after start-up) of loading FOLDER onto an 8-way
      fsdp mesh, or (replicated) as `evaluate --hf` did before: the whole model on the host, then copied
      to every device.
  python tests/helpers/sharded_load_worker.py two_process OUT.json FOLDER
      one of two processes (LIME_COORDINATOR, LIME_NUM_PROCESSES, LIME_PROCESS_ID; 4 devices each):
      the bytes and blocks this process read for an 8-way fsdp load, and the logits.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

DEVICES = int(os.environ.get("WORKER_DEVICES", "8"))
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from lime_jax import hf  # noqa: E402
from lime_jax.model import ModelConfig, Transformer  # noqa: E402
from lime_jax.model.model_config import LimeConfig  # noqa: E402
from lime_jax.runtime import distributed  # noqa: E402
from lime_jax.runtime import sharding as shard_lib  # noqa: E402
from tests.helpers import hf_numpy  # noqa: E402

SHAPES = dict(hidden=64, layers=3, heads=8, kv_heads=4, ffn=128, vocab=320)


def mesh_of(data: int, fsdp: int, tensor: int, devices=None) -> jax.sharding.Mesh:
  return shard_lib.make_mesh(
    ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}), devices
  )


def tokens() -> np.ndarray:
  return np.random.default_rng(1).integers(0, SHAPES["vocab"], size=(2, 12)).astype(np.int32)


def logits(cfg: ModelConfig, params, tokens_BT: np.ndarray, mesh=None) -> np.ndarray:
  """fp32 logits; with `mesh` replicated on it (fetchable from every process)."""
  fwd = lambda p, t: Transformer(cfg).apply({"params": p}, t)[0]
  out = shard_lib.replicated(mesh) if mesh is not None else None
  return np.asarray(jax.jit(fwd, out_shardings=out)(params, tokens_BT), np.float32)


def device_bytes(params) -> dict[str, int]:
  """Bytes of the parameters on each addressable device, from the arrays' shards."""
  per: dict[str, int] = {}
  for x in jax.tree.leaves(params):
    for shard in x.addressable_shards:
      per[str(shard.device)] = per.get(str(shard.device), 0) + shard.data.nbytes
  return per


def specs(params) -> dict[str, list]:
  return {
    "/".join(shard_lib.path_names(p)): [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
    for p, x in jax.tree_util.tree_leaves_with_path(params)
  }


def check(out_path: str, work: str) -> None:
  config = hf_numpy.llama_config(**SHAPES)
  sd = hf_numpy.llama_state_dict(config)
  folder = hf_numpy.write_folder(os.path.join(work, "llama"), config, sd, shards=2)
  gguf = hf_numpy.write_gguf(os.path.join(work, "llama.gguf"), config, sd, qtype="Q8_0")
  stored = sum(x.nbytes for x in sd.values())
  toks = tokens()
  ref = {}
  for name, path, dtype in (
    ("folder", folder, "float32"),
    ("folder", folder, "bfloat16"),
    ("gguf", gguf, "float32"),
  ):
    cfg, params = hf.load_pretrained(path, param_dtype=dtype)
    ref[name, dtype] = logits(cfg, params, toks)
  cases = [
    ("folder", (1, 8, 1), "float32", 4096),  # 4 KiB host chunks: stacked leaves in chunks of one layer
    ("folder", (1, 4, 2), "float32", None),
    ("folder", (2, 2, 2), "float32", None),
    ("folder", (1, 8, 1), "bfloat16", None),
    ("gguf", (1, 8, 1), "float32", 4096),
    ("gguf", (1, 2, 4), "float32", None),
  ]
  results = {"stored_bytes": stored, "cases": []}
  for name, shape, dtype, chunk in cases:
    path = folder if name == "folder" else gguf
    mesh = mesh_of(*shape)
    plan = hf.plan_load(path, mesh, param_dtype=dtype)
    source = hf.open_source(path)
    kwargs = {} if chunk is None else {"host_chunk_bytes": chunk}
    cfg, params = hf.load_sharded(path, mesh, param_dtype=dtype, plan=plan, source=source, **kwargs)
    expected = {
      "/".join(shard_lib.path_names(p)): [list(a) if isinstance(a, tuple) else a for a in s.spec]
      for p, s in jax.tree_util.tree_leaves_with_path(plan.shardings)
    }
    per = device_bytes(params)
    got = logits(cfg, params, toks)
    results["cases"].append(
      {
        "source": name,
        "mesh": list(shape),
        "dtype": dtype,
        "specs": specs(params),
        "expected_specs": expected,
        "device_bytes": per,
        "plan_per_device": plan.per_device_bytes,
        "plan_replicated": plan.replicated_bytes,
        "plan_total": plan.total_bytes,
        "bytes_read": source.bytes_read,
        "max_logit_diff": float(np.max(np.abs(got - ref[name, dtype]))),
        "describe": plan.describe(),
      }
    )
  # Upcycling into LIMe (identity init): the router is initialised on the mesh; logits are the plain ones.
  base = ModelConfig(vocab_size=1, topology="lime", lime=LimeConfig(init="identity"))
  cfg, params = hf.load_sharded(folder, mesh_of(1, 8, 1), base)
  results["upcycled"] = {
    "max_logit_diff": float(np.max(np.abs(logits(cfg, params, toks) - ref["folder", "float32"]))),
    "router_specs": {k: v for k, v in specs(params).items() if k.startswith("router")},
  }
  results["init_from"] = init_from_on_a_mesh(work)
  with open(out_path, "w") as f:
    json.dump(results, f, indent=1)


def init_from_on_a_mesh(work: str) -> dict:
  """`model.init_from='hf:...'` on an 8-way fsdp training mesh: the source read into the run's shardings,
  the three pause rows of the embedding the mean of the source's rows."""
  from lime_jax.experiments import seqvcr_mult  # pylint: disable=import-outside-toplevel
  from lime_jax.train import init_from  # pylint: disable=import-outside-toplevel
  from lime_jax.train import loop as train_lib  # pylint: disable=import-outside-toplevel

  folder = hf_numpy.probe_folder(os.path.join(work, "with_tokenizer"))
  config = seqvcr_mult.get_config("gpt2_table1")
  config.model.init_from = f"hf:{folder}"
  config.data.multiplication.update(num_digits=2, eval_file="")
  config.data.seq_len = 32
  config.train.update(batch_size=8, eval_every=0, async_checkpoint=False)
  config.eval.update(num_examples=8, batch_size=8)
  config.mesh.update(data=1, fsdp=8, tensor=1)
  run = train_lib.build(config)
  fresh = train_lib.create_state(run).params
  params, kept = init_from.initial_params(config, run.model_cfg, fresh)
  _, ref = hf.load_pretrained(folder)
  embed, ref_embed = np.asarray(params["embed"]), np.asarray(ref["embed"])
  rows = ref_embed.shape[0]
  same = [
    "/".join(shard_lib.path_names(p))
    for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(fresh))
    if x.sharding == y.sharding
  ]
  return {
    "leaves": len(jax.tree.leaves(params)),
    "same_sharding": len(same),
    "embed_spec": specs(params)["embed"],
    "kept": kept,
    "embed_rows": [rows, embed.shape[0]],
    "source_rows_diff": float(np.max(np.abs(embed[:rows] - ref_embed))),
    "new_rows_diff": float(np.max(np.abs(embed[rows:] - ref_embed.mean(0)))),
    "wq_diff": float(np.max(np.abs(np.asarray(params["layers"]["wq"]) - np.asarray(ref["layers"]["wq"])))),
  }


def vm_bytes(key: str) -> int:
  with open("/proc/self/status") as f:
    return int(f.read().split(key + ":")[1].split()[0]) * 1024


class AnonPeak:
  """The peak of RssAnon (this process's own allocations, not the memory-mapped file's pages), sampled
  every millisecond by a thread while the block runs."""

  def __enter__(self):
    self.base, self.peak, self._stop = vm_bytes("RssAnon"), 0, threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def _poll(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, vm_bytes("RssAnon"))
      time.sleep(0.001)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, vm_bytes("RssAnon"))


def rss(out_path: str, folder: str, mode: str, chunk_mib: float) -> None:
  jax.numpy.zeros(1).block_until_ready()
  mesh = mesh_of(1, 8, 1) if mode == "sharded" else mesh_of(8, 1, 1)
  plan = hf.plan_load(folder, mesh)
  base = vm_bytes("VmRSS")
  anon = AnonPeak().__enter__()
  if mode == "sharded":
    _, params = hf.load_sharded(folder, mesh, plan=plan, host_chunk_bytes=int(chunk_mib * 2**20))
  else:  # evaluate --hf before sharded loading: whole fp32 model on the host, replicated to every device
    _, params = hf.load_pretrained(folder, param_dtype="float32")
    params = jax.device_put(params, shard_lib.replicated(mesh))
  jax.block_until_ready(params)
  anon.__exit__()
  largest = max(int(np.prod(s)) * 4 for s in map(hf.open_source(folder).shape, hf.open_source(folder).keys()))
  result = {
    "mode": mode,
    "peak_bytes": vm_bytes("VmHWM") - base,
    "peak_anon_bytes": anon.peak - anon.base,
    "file_bytes": vm_bytes("RssFile"),
    "model_bytes": plan.total_bytes,
    "per_device_bytes": plan.per_device_bytes,
    "devices": len(jax.devices()),
    "largest_tensor_bytes": largest,
    "chunk_bytes": int(chunk_mib * 2**20),
  }
  with open(out_path, "w") as f:
    json.dump(result, f)


def two_process(out_path: str, folder: str) -> None:
  assert distributed.maybe_initialize()
  mesh = mesh_of(1, 8, 1)
  log: list = []
  source = hf.open_source(folder, log=log)
  plan = hf.plan_load(folder, mesh)
  cfg, params = hf.load_sharded(folder, mesh, plan=plan, source=source)
  got = logits(cfg, params, tokens(), mesh)
  # The one-device reference, read by this process alone after the count.
  ref_cfg, ref_params = hf.load_pretrained(folder)
  ref = logits(ref_cfg, ref_params, tokens())
  local = {
    "/".join(shard_lib.path_names(p)): [
      [[s.start, s.stop] for s in index] for index in sh.addressable_devices_indices_map(x.shape).values()
    ]
    for (p, x), sh in zip(jax.tree_util.tree_leaves_with_path(plan.abstract), jax.tree.leaves(plan.shardings))
  }
  result = {
    "process": jax.process_index(),
    "bytes_read": source.bytes_read,
    "reads": [[key, [list(r) for r in ranges]] for key, ranges in log],
    "local_blocks": local,
    "plan_total": plan.total_bytes,
    "plan_per_device": plan.per_device_bytes,
    "plan_replicated": plan.replicated_bytes,
    "device_bytes": device_bytes(params),
    "max_logit_diff": float(np.max(np.abs(got - ref))),
  }
  with open(out_path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  mode, out = sys.argv[1], sys.argv[2]
  if mode == "check":
    check(out, sys.argv[3])
  elif mode == "rss":
    rss(out, sys.argv[3], sys.argv[4], float(sys.argv[5]))
  elif mode == "two_process":
    two_process(out, sys.argv[3])
  else:
    raise SystemExit(f"unknown mode {mode!r}")
