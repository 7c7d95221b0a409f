"""Runs every arm of a comparison config one after another and writes one table.

  python -m lime_jax.tools.compare --config=experiments/compare_topologies.py --workdir=DIR \
      [--preset=default] [--arms=plain,lime,...] [--seeds=0] [--set=train.num_steps=500 ...] [--dry_run]

Each arm trains with `python -m lime_jax.main --config=FILE:PRESET,ARM` in DIR/<member> (the members
and their resumption are lime_jax/tools/sweep.py's), with the same data, steps and seed. Then DIR/results.md
and DIR/results.csv hold, per arm: parameters, training FLOPs per token (analytic, 3 x forward, the
topology's extra FLOPs included), final train loss, held-out CE / token accuracy / exact match, step time
(mean over the logged intervals after the first) and XLA's temp memory of the compiled train step;
DIR/curves.png the curves.
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from lime_jax.runtime import fileio
from lime_jax.tools import sweep


def arm_row(member: sweep.Member, workdir: str) -> dict[str, Any]:
  """One table row from a finished member's workdir (tokens per step from the run's own config.json,
  which holds its --set overrides and a fitted data.seq_len)."""
  summary = sweep.member_summary(member, workdir)
  report = fileio.read_json(fileio.join(workdir, "compile_report.json"))
  config = fileio.read_json(fileio.join(workdir, "config.json"))
  tokens = int(config["train"]["batch_size"]) * int(config["data"]["seq_len"])
  tokens_s = summary["tokens_per_s"]
  return {
    "arm": member.spec.partition(",")[2] or member.spec,
    "seed": member.seed,
    "params": summary["params"],
    "flops_per_token": report["flops_per_step_analytic"] / tokens,
    "final_train_loss": summary["final_train_loss"],
    "eval_ce": summary["eval_ce"],
    "eval_token_accuracy": summary["eval_token_accuracy"],
    "eval_exact_match": summary["eval_exact_match"],
    "step_ms": 1e3 * tokens / tokens_s if tokens_s else None,
    "temp_memory_mib": summary["temp_memory_mib"],
  }


def define_flags() -> None:
  """The flags (absl, as lime_jax.tools.sweep / main / evaluate); defined when run as a program, not on
  import."""
  sweep.define_common_flags()
  flags.DEFINE_string("preset", "default", "Preset shared by every arm (get_config('PRESET,ARM')).")
  flags.DEFINE_list("arms", [], "Arms, comma-separated (default: the config module's ARMS).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  root = sweep.workdir_flag()
  module = sweep.load_config_module(FLAGS.config)
  arms = list(FLAGS.arms) or list(module.ARMS)
  members = [
    sweep.Member(f"{FLAGS.preset},{arm}", int(seed), tuple(FLAGS.set)) for arm in arms for seed in FLAGS.seeds
  ]
  if FLAGS.dry_run:
    for member in members:
      print(sweep.dry_run_command(FLAGS.config, member, fileio.join(root, member.name)))
    return
  fileio.makedirs(root)
  rows = []
  for member in members:
    workdir = fileio.join(root, member.name)
    if sweep.run_member(FLAGS.config, member, workdir, tag="compare"):
      rows.append(arm_row(member, workdir))
  sweep.write_tables(rows, root)
  print(fileio.read_text(fileio.join(root, "results.md")) if rows else "no results")
  print(f"[compare] curves: {sweep.plot_curves(members, root)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
