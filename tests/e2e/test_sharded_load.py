"""Pretrained models loaded straight into shards (lime_jax/hf/sharded.py), in subprocesses with fake CPU
devices (tests/helpers/sharded_load_worker.py):

- 8 devices: every leaf of a random Llama (safetensors in 2 shards, bf16, and its Q8_0 GGUF file) has the
  rules' sharding on fsdp / tensor meshes, each device holds (total - unsharded leaves) / 8 + the
  unsharded leaves, every stored byte is read exactly once, the logits equal the one-device load's,
  upcycling into LIMe keeps them, and `init_from` puts the source in the training run's shardings;
- peak host memory of an 8-way fsdp load of a ~380 MiB model stays under the bound stated below, far
  from the 8 x model of the replicated load;
- two processes (4 devices each, jax.distributed on localhost) read only their own blocks: each reads
  half the sharded bytes plus the unsharded leaves, and the logits equal the one-device load's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import hf_numpy

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
WORKER = os.path.join(REPO, "tests", "helpers", "sharded_load_worker.py")
TIMEOUT_S = 420


def _env(devices: int = 8, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "LIME_", "JAX_PLATFORMS"))}
  env.update(WORKER_DEVICES=str(devices), JAX_PLATFORMS="cpu", **extra)
  return env


def _worker(*args: str, devices: int = 8, **env: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, WORKER, *args],
    cwd=REPO,
    env=_env(devices, **env),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict:
  work = tmp_path_factory.mktemp("sharded_load")
  out = work / "check.json"
  proc = _worker("check", str(out), str(work))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


def test_every_leaf_follows_the_rules_and_each_device_holds_an_eighth(checked):
  for case in checked["cases"]:
    label = f"{case['source']} {case['mesh']} {case['dtype']}"
    assert case["specs"] == case["expected_specs"], label
    data, fsdp, tensor = case["mesh"]
    specs = case["specs"]
    assert specs["layers/wq"] == [None, "fsdp" if fsdp > 1 else None] + ["tensor"] * (tensor > 1), label
    assert "fsdp" in specs["layers/mlp/w_down"] and "fsdp" in specs["embed"], label
    assert specs["layers/attn_norm/scale"] == [] and specs["final_norm/scale"] == [], label
    # Every device holds the same: its 1/(fsdp x tensor) of the sharded leaves plus the unsharded ones.
    per_device = set(case["device_bytes"].values())
    assert per_device == {case["plan_per_device"]}, label
    sharded = case["plan_total"] - case["plan_replicated"]
    assert case["plan_per_device"] == sharded // (fsdp * tensor) + case["plan_replicated"], label
    if fsdp * tensor == 8:
      assert case["plan_per_device"] <= case["plan_total"] / 8 + case["plan_replicated"], label
    assert case["plan_replicated"] < 0.01 * case["plan_total"], label
    # Every stored byte read exactly once (a block several devices share is read once).
    stored = checked["stored_bytes"] if case["source"] == "folder" else case["bytes_read"]
    assert case["bytes_read"] == stored, label
    assert case["max_logit_diff"] <= 1e-5 if case["dtype"] == "float32" else 2e-2, label


def test_upcycling_on_a_mesh_keeps_the_pretrained_logits(checked):
  assert checked["upcycled"]["max_logit_diff"] <= 1e-5
  assert checked["upcycled"]["router_specs"] == {"router/w_LRMR": []}  # tiny, replicated


def test_init_from_reads_the_source_into_the_training_shardings(checked):
  r = checked["init_from"]
  assert r["same_sharding"] == r["leaves"] and r["embed_spec"] == [None, "fsdp"]
  assert r["kept"] == ["['seq_vcr_proj']"] and r["embed_rows"][1] == r["embed_rows"][0] + 3
  assert r["source_rows_diff"] == 0.0 and r["wq_diff"] == 0.0 and r["new_rows_diff"] <= 1e-6


def test_peak_host_memory_of_a_sharded_load_stays_near_the_model_size(tmp_path):
  """An 8-way fsdp load of a 380 MiB fp32 model onto 8 fake CPU devices (whose memory is host memory).

  Bound asserted on the process's own allocations (peak RssAnon, sampled each millisecond; the
  memory-mapped file's pages are page cache, shared and reclaimable): what the local devices hold (here the
  whole model, once: 8 devices x 1/8 each) + 2 host chunks (the chunk being filled and the one copied
  to the devices) + the largest HF tensor in fp32 (a read block and its conversion) + 64 MiB for jax's
  own buffers. The replicated load `evaluate --hf` did before holds 8 x the model here (3.2 GB; one
  measurement: 3185 MB against 482 MB sharded)."""
  config = hf_numpy.llama_config(hidden=768, layers=8, heads=12, kv_heads=4, ffn=2048, vocab=32000)
  folder = hf_numpy.write_folder(str(tmp_path / "big"), config, hf_numpy.llama_state_dict(config))
  out = tmp_path / "rss.json"
  proc = _worker("rss", str(out), folder, "sharded", "64")
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(out.read_text())
  print(r)
  local_devices = r["per_device_bytes"] * r["devices"]
  bound = local_devices + 2 * r["chunk_bytes"] + r["largest_tensor_bytes"] + 64 * 2**20
  assert r["model_bytes"] > 350 * 2**20
  assert r["peak_anon_bytes"] <= bound, r
  assert r["peak_anon_bytes"] <= 0.25 * r["model_bytes"] * r["devices"], r  # vs the replicated load


def _free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_each_read_only_their_own_blocks(tmp_path):
  config = hf_numpy.llama_config(hidden=64, layers=3, heads=8, kv_heads=4, ffn=128, vocab=320)
  folder = hf_numpy.write_folder(str(tmp_path / "llama"), config, hf_numpy.llama_state_dict(config))
  dist = dict(LIME_COORDINATOR=f"localhost:{_free_port()}", LIME_NUM_PROCESSES="2")
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, "two_process", str(tmp_path / f"p{i}.json"), folder],
      cwd=REPO,
      env=_env(4, LIME_PROCESS_ID=str(i), **dist),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
    )
    for i in range(2)
  ]
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, 9)
  assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
  results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
  for r in results:
    sharded = r["plan_total"] - r["plan_replicated"]
    assert r["bytes_read"] == sharded // 2 + r["plan_replicated"], r["process"]
    assert set(r["device_bytes"].values()) == {r["plan_per_device"]} and len(r["device_bytes"]) == 4
    assert r["max_logit_diff"] <= 1e-5
    # The embedding's columns (d_model, fsdp-sharded) read by this process are its devices' blocks only.
    mine = {tuple(block[1]) for block in r["local_blocks"]["embed"]}
    read = {tuple(ranges[1]) for key, ranges in r["reads"] if key == "model.embed_tokens.weight"}
    assert read == mine and len(mine) == 4, r["process"]
  blocks = [{tuple(b[1]) for b in r["local_blocks"]["embed"]} for r in results]
  assert not blocks[0] & blocks[1]
