"""Evaluation entry point: probes on a run's orbax checkpoint (or on a random-init model).

  python -m lime_jax.evaluate --workdir=RUN_DIR --probes=collapse,copying [--step=N]
  python -m lime_jax.evaluate --workdir=OUT_DIR --random_init --config=experiments/baseline.py[:preset]
  python -m lime_jax.evaluate --probes=entropy --compare RUN_A RUN_B [--out=DIR]

Writes RUN_DIR/eval/<step>/{results.json, *.png, summary.md}; `--compare` also writes compare.md and
the overlaid plots to --out (default RUN_A/eval/compare). All logic lives in lime_jax/probes/runner.py.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from lime_jax.probes import registry, runner

_DEFAULTS = registry.ProbeOptions()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/), or the output "
                               "directory for --random_init.")
_PROBES = flags.DEFINE_list("probes", ["collapse", "entropy"], "Probes to run, comma-separated; 'all' "
                            "runs every registered probe.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_RANDOM_INIT = flags.DEFINE_bool("random_init", False, "Probe an untrained model built from --config.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config[:preset] (--random_init).",
                                          lock_config=True)
_COMPARE = flags.DEFINE_list("compare", [], "Run directories to compare (also: --compare RUN_A RUN_B ...).")
_OUT = flags.DEFINE_string("out", None, "Output directory of --compare (default RUN_A/eval/compare).")
_LENGTHS = flags.DEFINE_list("lengths", [str(n) for n in _DEFAULTS.lengths], "copying / counting lengths.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", _DEFAULTS.num_examples,
                                     "Examples per length (copying, counting) or eval sequences (entropy).")
_COLLAPSE_NS = flags.DEFINE_list("collapse_ns", [str(n) for n in _DEFAULTS.collapse_ns], "collapse: n grid.")
_COLLAPSE_DTYPES = flags.DEFINE_list("collapse_dtypes", list(_DEFAULTS.collapse_dtypes),
                                     "collapse: activation dtypes.")
_OVERSQUASH_LENGTH = flags.DEFINE_integer("oversquash_length", _DEFAULTS.oversquash_length,
                                          "oversquash: prompt length.")
_OVERSQUASH_METHOD = flags.DEFINE_enum("oversquash_method", _DEFAULTS.oversquash_method,
                                       ["auto", "exact", "hutchinson"], "oversquash: Jacobian norm method.")
_SEP_TOKENS = flags.DEFINE_list("separability_tokens", [], "separability: class strings (default: "
                                "is,are,was,were for text, the first four digits otherwise).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the probes' random prompts.")


def _options() -> registry.ProbeOptions:
  return registry.ProbeOptions(
      lengths=tuple(int(n) for n in _LENGTHS.value), num_examples=_NUM_EXAMPLES.value,
      collapse_ns=tuple(int(n) for n in _COLLAPSE_NS.value), collapse_dtypes=tuple(_COLLAPSE_DTYPES.value),
      oversquash_length=_OVERSQUASH_LENGTH.value, oversquash_method=_OVERSQUASH_METHOD.value,
      separability_tokens=tuple(_SEP_TOKENS.value), seed=_SEED.value)


def _probe_names() -> list[str]:
  names = list(_PROBES.value)
  if names == ["all"]:
    return list(registry.known_probes())
  for name in names:
    registry.get_probe(name)
  return names


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.ERROR)
  compare_runs = list(_COMPARE.value) + (argv[1:] if _COMPARE.value else [])
  if len(argv) > 1 and not _COMPARE.value:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    names, options = _probe_names(), _options()
    if compare_runs:
      if len(compare_runs) < 2:
        raise app.UsageError("--compare needs at least two run directories.")
      runs = {}
      for run_dir in compare_runs:
        out_dir, results = runner.evaluate(run_dir, names, options, _STEP.value)
        print(f"{run_dir}: wrote {out_dir}")
        runs[os.path.basename(os.path.normpath(run_dir))] = results
      out = _OUT.value or os.path.join(compare_runs[0], "eval", "compare")
      runner.compare(runs, out)
      print(f"Comparison: {os.path.join(out, 'compare.md')}")
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (or --compare RUN_A RUN_B ...).")
    if _RANDOM_INIT.value and _CONFIG.value is None:
      raise app.UsageError("--random_init needs --config=experiments/<name>.py[:preset].")
    out_dir, _ = runner.evaluate(_WORKDIR.value, names, options, _STEP.value,
                                 _CONFIG.value if _RANDOM_INIT.value else None)
    print(f"Wrote {out_dir}/results.json, summary.md and the plots.")
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  app.run(main)
