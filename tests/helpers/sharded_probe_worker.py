"""Every probe, the inspect API and the harness backend with parameters sharded over 8 fake CPU devices,
against the same with parameters replicated (XLA_FLAGS must be set before jax is imported).

  python tests/helpers/sharded_probe_worker.py OUT.json WORK_DIR

Writes, per sharded mesh, the differences from the replicated run: `numeric` (largest absolute
difference of any number in the probes' results), `discrete` (paths of strings / ints / bools that
differ), and the largest differences of inspect's cached activations, the logit lens and the harness
backend's log-likelihoods (its greedy generations: equal or not). tests/e2e/test_sharded_probes.py
reads it; its replicated results (WORK_DIR/out_replicated) are the reference of the two-process run there.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from lime_jax import inspect  # noqa: E402
from lime_jax.config import default_config  # noqa: E402
from lime_jax.evals import lm_harness  # noqa: E402
from lime_jax.probes import pretrained, runner  # noqa: E402
from lime_jax.probes.registry import ProbeOptions  # noqa: E402
from tests.helpers import hf_numpy  # noqa: E402
from tests.helpers.compare_results import differences  # noqa: E402

HF_PROBES = ["copying", "counting", "collapse", "oversquash", "entropy", "separability"]
RUN_PROBES = ["lm", "router", "entropy"]  # on a random-init LIMe text run
# tests/e2e/test_sharded_probes.py passes the same options as flags (FLAGS there).
OPTIONS = ProbeOptions(
  lengths=(3,),
  num_examples=4,
  collapse_ns=(1, 2, 6),
  collapse_dtypes=("float32",),
  oversquash_length=8,
)
MESHES = {"fsdp8": (8, 1), "fsdp2_tensor4": (2, 4)}


def text_config(work: str):
  """A LIMe text run's config (byte tokenizer, jsonl files), probed at random init."""
  words = "to be or not to be that is the question whether tis nobler".split()
  rng = np.random.default_rng(0)
  os.makedirs(work, exist_ok=True)
  files = {}
  for split, n in (("train", 40), ("val", 24)):
    files[split] = os.path.join(work, f"{split}-0.jsonl")
    with open(files[split], "w") as f:
      f.writelines(json.dumps({"text": " ".join(rng.choice(words, 9))}) + "\n" for _ in range(n))
  c = default_config()
  c.data.task, c.data.seq_len, c.data.loss_scope = "text", 32, "all"
  c.data.text.update(source="files", files=files["train"], eval_files=files["val"])
  c.model.update(num_layers=3, d_model=64, num_heads=8, num_kv_heads=4, ffn_dim=128, topology="lime")
  c.eval.update(num_examples=8, batch_size=8, greedy=False)
  return c


def hf_run(folder: str, out: str, mesh) -> dict:
  _, results = pretrained.evaluate_hf(folder, out, HF_PROBES, OPTIONS, mesh=mesh)
  return results["probes"]


def lime_run(work: str, mesh) -> dict:
  _, results = runner.evaluate(work, RUN_PROBES, OPTIONS, random_init_config=text_config(work), mesh=mesh)
  return results["probes"]


def inspect_run(folder: str, mesh) -> dict[str, np.ndarray]:
  model = inspect.load(folder, mesh=mesh)
  tokens_BT = np.asarray([model.encode("to be or not to be, that is the question")] * 8, np.int32)
  logits_BTV, acts = inspect.run_with_cache(model, tokens_BT, names=("hidden", "attn_out"))
  lens = inspect.logit_lens(model, tokens_BT, np.roll(tokens_BT, -1, axis=1))
  return {
    "logits": np.asarray(logits_BTV),
    "hidden": np.asarray(acts["hidden"]),
    "attn_out": np.asarray(acts["attn_out"]),
    "lens_top_probs": np.asarray(lens.top_probs_LBTK),
    "lens_target_prob": np.asarray(lens.target_prob_LBT),
  }


def harness_run(folder: str, mesh) -> dict:
  lm = lm_harness.LimeJaxLM.from_path(folder, mesh=mesh, batch_size=8)
  ids = lm.tok_encode("to be or not to be that is the question")
  pairs = [(ids[:k], ids[k : k + 3]) for k in range(1, 7)]
  return {
    "loglikelihood": np.asarray([ll for ll, _ in lm._score(pairs)]),  # pylint: disable=protected-access
    "greedy": [bool(g) for _, g in lm._score(pairs)],  # pylint: disable=protected-access
    "generated": lm._generate([ids[:4], ids[:6]], 6, []),  # pylint: disable=protected-access
  }


def main(out_path: str, work: str) -> None:
  folder = hf_numpy.probe_folder(work)
  ref_mesh = runner.eval_mesh()
  ref = {
    "hf": hf_run(folder, os.path.join(work, "out_replicated"), ref_mesh),
    "lime": lime_run(os.path.join(work, "lime_replicated"), ref_mesh),
    "inspect": inspect_run(folder, ref_mesh),
    "harness": harness_run(folder, None),
  }
  report = {"probes": {"hf": sorted(ref["hf"]), "lime": sorted(ref["lime"])}, "meshes": {}}
  for name, (fsdp, tensor) in MESHES.items():
    mesh = runner.eval_mesh(fsdp, tensor)
    got_hf = hf_run(folder, os.path.join(work, f"out_{name}"), mesh)
    got_lime = lime_run(os.path.join(work, f"lime_{name}"), mesh)
    got_inspect = inspect_run(folder, mesh)
    got_harness = harness_run(folder, mesh)
    hf_num, hf_odd = differences(ref["hf"], got_hf)
    lime_num, lime_odd = differences(ref["lime"], got_lime)
    report["meshes"][name] = {
      "mesh": dict(mesh.shape),
      "wq_spec": str(inspect.load(folder, mesh=mesh).params["layers"]["wq"].sharding.spec),
      "probes_numeric": max(hf_num, lime_num),
      "probes_discrete": hf_odd + lime_odd,
      "inspect": {k: float(np.max(np.abs(got_inspect[k] - v))) for k, v in ref["inspect"].items()},
      "harness_loglikelihood": float(
        np.max(np.abs(got_harness["loglikelihood"] - ref["harness"]["loglikelihood"]))
      ),
      "harness_same_greedy": got_harness["greedy"] == ref["harness"]["greedy"],
      "harness_same_generated": got_harness["generated"] == ref["harness"]["generated"],
    }
  with open(out_path, "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
