"""Runs every arm of a comparison config one after another and writes one table.

  python -m lime_jax.compare --config=experiments/compare_topologies.py --workdir=DIR \
      [--preset=default] [--arms=plain,lime,...] [--seeds=0] [--set=train.num_steps=500 ...] [--dry_run]

Each arm trains with `python -m lime_jax.main --config=FILE:PRESET,ARM` in DIR/<member> (the members
and their resumption are lime_jax/sweep.py's), with the same data, steps and seed. Then DIR/results.md
and DIR/results.csv hold, per arm: parameters, training FLOPs per token (analytic, 3 x forward, the
topology's extra FLOPs included), final train loss, held-out CE / token accuracy / exact match, step time
(mean over the logged intervals after the first) and XLA's temp memory of the compiled train step;
DIR/curves.png the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

from lime_jax import sweep


def arm_row(member: sweep.Member, workdir: str, batch: int, seq_len: int) -> dict[str, Any]:
  """One table row from a finished member's workdir."""
  summary = sweep.member_summary(member, workdir)
  with open(os.path.join(workdir, "compile_report.json"), encoding="utf-8") as f:
    report = json.load(f)
  tokens = batch * seq_len
  tokens_s = summary["tokens_per_s"]
  return {
      "arm": member.spec.partition(",")[2] or member.spec, "seed": member.seed,
      "params": summary["params"],
      "flops_per_token": report["flops_per_step_analytic"] / tokens,
      "final_train_loss": summary["final_train_loss"], "eval_ce": summary["eval_ce"],
      "eval_token_accuracy": summary["eval_token_accuracy"], "eval_exact_match": summary["eval_exact_match"],
      "step_ms": 1e3 * tokens / tokens_s if tokens_s else None,
      "temp_memory_mib": summary["temp_memory_mib"],
  }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Command-line arguments (argparse: lime_jax.sweep's absl flags are defined on import)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="Comparison config file (get_config('PRESET,ARM')).")
  p.add_argument("--workdir", required=True, help="Folder holding one workdir per arm and the table.")
  p.add_argument("--preset", default="default", help="Preset shared by every arm.")
  p.add_argument("--arms", default="", help="Comma-separated arms (default: the config module's ARMS).")
  p.add_argument("--seeds", default="0", help="Comma-separated seeds (each arm runs every seed).")
  p.add_argument("--set", action="append", default=[],
                 help="Override applied to every arm, e.g. train.num_steps=500 (repeatable).")
  p.add_argument("--dry_run", action="store_true", help="Print the commands instead of running them.")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  module = sweep.load_config_module(args.config)
  arms = [a for a in args.arms.split(",") if a] or list(module.ARMS)
  members = [sweep.Member(f"{args.preset},{arm}", int(seed), tuple(args.set))
             for arm in arms for seed in args.seeds.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  rows = []
  for member in members:
    workdir = os.path.join(args.workdir, member.name)
    if args.dry_run:
      print(shlex.join(sweep.member_command(args.config, member, workdir)))
      continue
    if sweep.run_member(args.config, member, workdir, tag="compare"):
      config = module.get_config(member.spec)
      for override in member.overrides:  # --set values that change the batch shape
        key, _, value = override.partition("=")
        if key in ("train.batch_size", "data.seq_len"):
          section, name = key.split(".")
          config[section][name] = int(value)
      rows.append(arm_row(member, workdir, config.train.batch_size, config.data.seq_len))
  if args.dry_run:
    return
  sweep.write_tables(rows, args.workdir)
  print(open(os.path.join(args.workdir, "results.md"), encoding="utf-8").read() if rows else "no results")
  print(f"[compare] curves: {sweep.plot_curves(members, args.workdir)}")


if __name__ == "__main__":
  main()
