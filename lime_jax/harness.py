"""lm-evaluation-harness on a lime_jax model: standard benchmarks and local task YAMLs.

  python -m lime_jax.harness --model=PATH --tasks=hellaswag,arc_easy [--num_fewshot=0] [--limit=N]
      [--batch_size=16] [--max_length=N] [--dtype=float32] [--step=N] [--include_path=DIR]
      [--output_path=DIR] [--log_samples] [--gen_kwargs=k=v,...] [--apply_chat_template]

PATH is a lime_jax run's workdir (its newest intact checkpoint, or --step), a Hugging Face folder or a
.gguf file (lime_jax/evals/lm_harness.py `LimeJaxLM.from_path`). `--include_path` adds folders of task
YAMLs (e.g. a local jsonl with `dataset_path: json`); `--nodefault_tasks` skips indexing the harness's
own tasks. Prints the harness's table and writes OUTPUT_PATH/results.json (OUTPUT_PATH itself when it
ends in .json), with `--log_samples` also samples_<task>.jsonl beside it. Standard tasks download their
data from the Hugging Face Hub on first use (cached by `datasets`).
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

import json
import os
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from lime_jax.model.model_config import DTYPES

_MODEL = flags.DEFINE_string("model", None, "A run's workdir, a Hugging Face folder or a .gguf file.")
_TASKS = flags.DEFINE_list("tasks", None, "Harness task (or group) names, comma-separated.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (default: each task's own).")
_LIMIT = flags.DEFINE_float("limit", None, "Documents per task (< 1: a fraction); for quick checks only.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per forward pass.")
_MAX_LENGTH = flags.DEFINE_integer(
  "max_length", None, "Tokens per row (default: the model's stated length, a run's data.seq_len, else 2048)."
)
_MAX_GEN_TOKS = flags.DEFINE_integer("max_gen_toks", 256, "generate_until: tokens when a task sets none.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Activation (compute) dtype.")
_STEP = flags.DEFINE_integer("step", None, "A run's checkpoint step (default: the newest intact one).")
_ADD_BOS = flags.DEFINE_enum(
  "add_bos_token", "auto", ["auto", "true", "false"], "BOS before each text: auto follows the tokenizer."
)
_INCLUDE_PATH = flags.DEFINE_list("include_path", [], "Folders of task YAMLs to add, comma-separated.")
_DEFAULT_TASKS = flags.DEFINE_bool("default_tasks", True, "Index the harness's own tasks too.")
_OUTPUT_PATH = flags.DEFINE_string("output_path", None, "Folder (or .json file) for the results.")
_LOG_SAMPLES = flags.DEFINE_bool("log_samples", False, "Also write each document's requests and responses.")
_GEN_KWARGS = flags.DEFINE_string("gen_kwargs", None, "generate_until options, e.g. max_gen_toks=64.")
_CHAT = flags.DEFINE_bool("apply_chat_template", False, "Render prompts with the tokenizer's chat template.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the few-shot sampling (and the harness's other seeds).")
_MESH_FSDP = flags.DEFINE_integer(
  "mesh_fsdp", 1, "Devices the parameters are split over on the fsdp axis (a model larger than one device)."
)
_MESH_TENSOR = flags.DEFINE_integer(
  "mesh_tensor", 1, "Devices the parameters are split over on the tensor axis."
)
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_iters", 100000, "Bootstrap resamples for the stderrs (0: off).")


def task_manager(tasks: Sequence[str], include_path: Sequence[str] = (), default_tasks: bool = True) -> Any:
  """The harness's `TaskManager` over its own tasks (`default_tasks`) and the YAML folders of
  `include_path`; raises naming the `tasks` it does not know."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel

  for path in include_path:
    if not os.path.isdir(path):
      raise FileNotFoundError(f"--include_path={path!r} is not a folder of task YAMLs.")
  manager = TaskManager(include_path=list(include_path) or None, include_defaults=default_tasks)
  unknown = [t for t in tasks if t not in manager.all_tasks and not os.path.isfile(t)]
  if unknown:
    raise ValueError(
      f"--tasks: unknown task(s) {unknown}"
      + ("" if default_tasks else " (the harness's own tasks are off: --nodefault_tasks)")
      + "; add a folder of task YAMLs with --include_path."
    )
  return manager


def evaluate(
  lm: Any, tasks: Sequence[str], manager: Any = None, seed: int = 0, **options: Any
) -> dict[str, Any]:
  """`lm_eval.simple_evaluate` of `lm` (a `LimeJaxLM`) on `tasks` (from `manager`, default the harness's
  own), every seed `seed`; `options`: simple_evaluate's (num_fewshot, limit, log_samples, ...)."""
  import lm_eval  # pylint: disable=import-outside-toplevel

  manager = manager if manager is not None else task_manager(tasks)
  seeds = {k: seed for k in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")}
  return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, **seeds, **options)


def write_results(results: dict[str, Any], output_path: str) -> str:
  """Writes the results (samples apart, one jsonl per task) under `output_path`; returns the json's path."""
  from lm_eval.utils import handle_non_serializable  # pylint: disable=import-outside-toplevel

  path = output_path if output_path.endswith(".json") else os.path.join(output_path, "results.json")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  results = dict(results)
  for task, samples in (results.pop("samples", None) or {}).items():
    with open(os.path.join(folder, f"samples_{task}.jsonl"), "w", encoding="utf-8") as f:
      for sample in samples:
        f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, default=handle_non_serializable, ensure_ascii=False)
  return path


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _MODEL.value or not _TASKS.value:
    raise app.UsageError("--model=PATH and --tasks=a,b are required.")
  try:
    from lm_eval.utils import make_table  # pylint: disable=import-outside-toplevel

    from lime_jax.evals import lm_harness  # pylint: disable=import-outside-toplevel
    from lime_jax.probes import runner  # pylint: disable=import-outside-toplevel

    manager = task_manager(_TASKS.value, _INCLUDE_PATH.value, _DEFAULT_TASKS.value)
    sharded = _MESH_FSDP.value * _MESH_TENSOR.value > 1
    lm = lm_harness.LimeJaxLM.from_path(
      _MODEL.value,
      dtype=_DTYPE.value,
      step=_STEP.value,
      mesh=runner.eval_mesh(_MESH_FSDP.value, _MESH_TENSOR.value) if sharded else None,
      batch_size=_BATCH_SIZE.value,
      max_length=_MAX_LENGTH.value,
      max_gen_toks=_MAX_GEN_TOKS.value,
      add_bos_token={"auto": None, "true": True, "false": False}[_ADD_BOS.value],
    )
    limit = _LIMIT.value
    results = evaluate(
      lm,
      _TASKS.value,
      manager,
      seed=_SEED.value,
      num_fewshot=_NUM_FEWSHOT.value,
      limit=int(limit) if limit is not None and limit >= 1 else limit,
      log_samples=_LOG_SAMPLES.value,
      gen_kwargs=_GEN_KWARGS.value,
      apply_chat_template=_CHAT.value,
      bootstrap_iters=_BOOTSTRAP.value,
    )
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  print(make_table(results))
  if results.get("groups"):
    print(make_table(results, "groups"))
  if _OUTPUT_PATH.value:
    print(f"Wrote {write_results(results, _OUTPUT_PATH.value)}")


if __name__ == "__main__":
  app.run(main)
