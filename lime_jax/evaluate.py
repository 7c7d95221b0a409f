"""Evaluation entry point: probes on a run's orbax checkpoint (or on a random-init model).

  python -m lime_jax.evaluate --workdir=RUN_DIR --probes=collapse,copying [--step=N]
  python -m lime_jax.evaluate --workdir=OUT_DIR --random_init --config=experiments/baseline.py[:preset]
  python -m lime_jax.evaluate --probes=entropy --compare RUN_A RUN_B [--out=DIR] [--recompute]
  python -m lime_jax.evaluate --hf=HF_FOLDER --out=DIR [--dtype=bfloat16] --probes=copying,counting,...
  python -m lime_jax.evaluate --hf=BIG_FOLDER --out=DIR --mesh_fsdp=8 [--param_dtype=bfloat16]

`--mesh_fsdp` / `--mesh_tensor` shard the parameters over that many devices by the training rules (the
rest of the devices split the probe batches); a model larger than one device loads straight into its
shards (lime_jax/hf/sharded.py), and the results equal the replicated run's. The parameters' memory per
device and the mesh are printed before anything is read; a model the mesh cannot hold is refused with
the figure and the axes to enlarge. Several processes (a TPU slice, a SLURM job: launch/) are joined by
`jax.distributed` as in training (lime_jax/runtime/distributed.py); process 0 writes the results.

`--hf` probes a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json; lime_jax/probes/
pretrained.py) with its own tokenizer; copying / counting are then asked in natural language, with
`--chat_template` as a user message of the tokenizer's chat template (instruction-tuned models).

A probe that cannot run on the checkpoint (e.g. copying on an arithmetic run) fails the command, naming
the reason and the probes that can run, unless --skip_incompatible. `--compare` reuses each run's saved
results computed with the same step, config and options, and recomputes the rest.

Writes RUN_DIR/eval/<step>/{results.json, *.png, summary.md}; `--compare` also writes compare.md and
the overlaid plots to --out (default RUN_A/eval/compare). All logic lives in lime_jax/probes/runner.py.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lime_jax.checkpoint import DamagedCheckpointError
from lime_jax.model import model_config
from lime_jax.probes import registry, runner
from lime_jax.runtime import cli, distributed, errors, fileio

_DEFAULTS = registry.ProbeOptions()
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (with checkpoints/), or the output directory for --random_init."
)
_PROBES = flags.DEFINE_list(
  "probes", ["collapse", "entropy"], "Probes to run, comma-separated; 'all' runs every registered probe."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_RANDOM_INIT = flags.DEFINE_bool("random_init", False, "Probe an untrained model built from --config.")
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config[:preset] (--random_init).", lock_config=True
)
_COMPARE = flags.DEFINE_list("compare", [], "Run directories to compare (also: --compare RUN_A RUN_B ...).")
_OUT = flags.DEFINE_string(
  "out", None, "Output directory of --compare (default RUN_A/eval/compare) and of --hf (required there)."
)
_LENGTHS = flags.DEFINE_list("lengths", [str(n) for n in _DEFAULTS.lengths], "copying / counting lengths.")
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples",
  _DEFAULTS.num_examples,
  "Examples per length (copying, counting) or eval sequences (entropy).",
)
_COLLAPSE_NS = flags.DEFINE_list("collapse_ns", [str(n) for n in _DEFAULTS.collapse_ns], "collapse: n grid.")
_COLLAPSE_DTYPES = flags.DEFINE_list(
  "collapse_dtypes", list(_DEFAULTS.collapse_dtypes), "collapse: activation dtypes."
)
_OVERSQUASH_LENGTH = flags.DEFINE_integer(
  "oversquash_length", _DEFAULTS.oversquash_length, "oversquash: prompt length."
)
_OVERSQUASH_METHOD = flags.DEFINE_enum(
  "oversquash_method",
  _DEFAULTS.oversquash_method,
  ["auto", "exact", "hutchinson"],
  "oversquash: Jacobian norm method.",
)
_SEP_TOKENS = flags.DEFINE_list(
  "separability_tokens",
  [],
  "separability: class strings (default: is,are,was,were for text, the first four digits otherwise).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the probes' random prompts.")
# Retired: multiple choice moved to lm-evaluation-harness (`python -m lime_jax.harness`); kept as flags so
# that passing one fails naming the replacement instead of as an unknown flag.
_RETIRED = {
  name: flags.DEFINE_string(name, None, "Retired: use python -m lime_jax.harness.")
  for name in ("mc_tasks", "mc_shots", "mc_limit")
}
_SKIP_INCOMPATIBLE = flags.DEFINE_bool(
  "skip_incompatible",
  False,
  "Skip (with a note) the probes that cannot run on the checkpoint, instead of failing.",
)
_HF = flags.DEFINE_string("hf", None, "A Hugging Face model folder (local or gs://) to probe; needs --out.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(model_config.DTYPES), "--hf: activation (compute) dtype.")
_PARAM_DTYPE = flags.DEFINE_enum(
  "param_dtype", "float32", list(model_config.DTYPES), "--hf: parameter dtype (bfloat16 halves their memory)."
)
_MESH_FSDP = flags.DEFINE_integer(
  "mesh_fsdp", 1, "Devices the parameters are split over on the fsdp axis (d_model); 1: not split."
)
_MESH_TENSOR = flags.DEFINE_integer(
  "mesh_tensor", 1, "Devices the parameters are split over on the tensor axis (heads, mlp, vocab)."
)
_DEVICE_MEMORY_GB = flags.DEFINE_float(
  "device_memory_gb",
  0.0,
  "--hf: memory of one device in GiB for the fit check (0: the device's own figure; CPUs state none).",
)
_TEXT_FILE = flags.DEFINE_string(
  "text_file",
  "",
  "--hf: .txt whose paragraphs entropy / separability read (default: built-in English sentences).",
)
_CHAT_TEMPLATE = flags.DEFINE_bool(
  "chat_template",
  False,
  "--hf: ask the copying / counting questions as one user message of the tokenizer's chat template "
  "(instruction-tuned models); fails when the tokenizer has none.",
)
_RESUME = flags.DEFINE_bool(
  "resume",
  False,
  "--workdir / --hf: skip the probes already saved in the output's results.json with the same "
  "checkpoint, config and options (results.json is written as each probe finishes), and resume an "
  "unfinished copying / counting / collapse probe after the cells it saved (OUT/cells/<probe>.json).",
)
_RECOMPUTE = flags.DEFINE_bool(
  "recompute",
  False,
  "--compare: run every probe again, even where a result computed with the same options is saved.",
)


def _options() -> registry.ProbeOptions:
  return registry.ProbeOptions(
    lengths=tuple(int(n) for n in _LENGTHS.value),
    num_examples=_NUM_EXAMPLES.value,
    collapse_ns=tuple(int(n) for n in _COLLAPSE_NS.value),
    collapse_dtypes=tuple(_COLLAPSE_DTYPES.value),
    oversquash_length=_OVERSQUASH_LENGTH.value,
    oversquash_method=_OVERSQUASH_METHOD.value,
    separability_tokens=tuple(_SEP_TOKENS.value),
    text_file=_TEXT_FILE.value,
    seed=_SEED.value,
    chat_template=_CHAT_TEMPLATE.value,
  )


def _probe_names() -> list[str]:
  names = list(_PROBES.value)
  if names == ["all"]:
    return list(registry.known_probes())
  for name in names:
    registry.get_probe(name)
  return names


def main(argv: list[str]) -> None:
  distributed.maybe_initialize()
  logging.set_verbosity(logging.ERROR)
  say = print if jax.process_index() == 0 else (lambda *_: None)  # process 0 reports (and writes)
  compare_runs = list(_COMPARE.value) + (argv[1:] if _COMPARE.value else [])
  if len(argv) > 1 and not _COMPARE.value:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  retired = [f"--{name}" for name, flag in _RETIRED.items() if flag.present]
  if retired:
    raise app.UsageError(
      f"{', '.join(retired)}: the lm probe's multiple-choice tasks were retired; run benchmarks on "
      "lm-evaluation-harness: python -m lime_jax.harness --model=RUN_OR_HF_FOLDER --tasks=hellaswag,... "
      "(a local jsonl: a task YAML with dataset_path: json and --include_path; README 'Standard benchmarks')."
    )
  try:
    names, options = _probe_names(), _options()
    mesh = runner.eval_mesh(_MESH_FSDP.value, _MESH_TENSOR.value)
    if compare_runs:
      if len(compare_runs) < 2:
        raise app.UsageError("--compare needs at least two run directories.")
      runs = {}
      labels = [fileio.basename(d) for d in compare_runs]
      for run_dir, label in zip(compare_runs, labels):
        out_dir, results = runner.evaluate(
          run_dir,
          names,
          options,
          _STEP.value,
          skip_incompatible=_SKIP_INCOMPATIBLE.value,
          reuse=not _RECOMPUTE.value,
          mesh=mesh,
        )
        say(f"{run_dir}: wrote {out_dir}")
        runs[label if labels.count(label) == 1 else run_dir.rstrip("/")] = results
      out = _OUT.value or fileio.join(compare_runs[0], "eval", "compare")
      runner.compare(runs, out, names)
      say(f"Comparison: {fileio.join(out, 'compare.md')}")
      return
    if _HF.value:
      if _WORKDIR.value or _RANDOM_INIT.value:
        raise app.UsageError(
          "--hf probes a Hugging Face folder: drop --workdir / --random_init, and give "
          "--out=DIR for the results."
        )
      if not _OUT.value:
        raise app.UsageError("--hf needs --out=DIR (where results.json and the plots go).")
      from lime_jax.probes import pretrained  # pylint: disable=import-outside-toplevel

      device_gb = _DEVICE_MEMORY_GB.value
      out_dir, _ = pretrained.evaluate_hf(
        _HF.value,
        _OUT.value,
        names,
        options,
        _DTYPE.value,
        _SKIP_INCOMPATIBLE.value,
        reuse=_RESUME.value,
        mesh=mesh,
        param_dtype=_PARAM_DTYPE.value,
        device_bytes=int(device_gb * 2**30) if device_gb > 0 else None,
      )
      say(f"Wrote {out_dir}/results.json, summary.md and the plots.")
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (or --compare RUN_A RUN_B ..., or --hf=FOLDER --out=DIR).")
    if _RANDOM_INIT.value and _CONFIG.value is None:
      raise app.UsageError("--random_init needs --config=experiments/<name>.py[:preset].")
    out_dir, _ = runner.evaluate(
      _WORKDIR.value,
      names,
      options,
      _STEP.value,
      _CONFIG.value if _RANDOM_INIT.value else None,
      skip_incompatible=_SKIP_INCOMPATIBLE.value,
      reuse=_RESUME.value,
      mesh=mesh,
    )
    say(f"Wrote {out_dir}/results.json, summary.md and the plots.")
  except (DamagedCheckpointError, errors.DoesNotFitError) as e:  # not a usage error: no usage text
    raise SystemExit(f"FATAL: {e}") from None
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
