"""Sweep runner: run the members of a comparison one after another, then tabulate and plot them.

  python -m lime_jax.sweep --config=experiments/lime_deep.py --specs=default,baseline --specs=default,lime \
      --seeds=0,1 --root=workdirs/lime_deep_cmp [--set=train.num_steps=500 ...] [--dry_run]

Each member (spec x variation x seed) trains with `python -m lime_jax.main` in its own workdir
ROOT/<spec>_s<seed>[_<overrides>] (a finished member is skipped, an interrupted one resumes). `--dry_run`
prints the commands instead, to run them on a cluster. The results land in ROOT/results.md,
ROOT/results.csv, ROOT/curves.png and, when the members ran greedy evaluation (eval.greedy),
ROOT/ablation.png (greedy exact match and layer entropy per member).

Variations (ablations): `--vary="model.seq_vcr.lambda1=0.5 model.seq_vcr.lambda2=0.002"` (repeatable; one
member group per flag), or `--sweep=NAME` for the override lists in the config file's `SWEEPS` dict
(e.g. experiments/seqvcr_mult.py: `lambdas`, `proj_dim`).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from typing import Any

from absl import app, flags


@dataclasses.dataclass(frozen=True)
class Member:
  spec: str
  seed: int
  overrides: tuple[str, ...]
  vary: tuple[str, ...] = ()  # this member's own overrides (an ablation point)

  @property
  def name(self) -> str:
    short = lambda o: o.partition("=")[0].split(".")[-1] + o.partition("=")[2]  # a.b.c=0.5 -> c0.5
    extra = "_".join(short(o) for o in self.overrides + self.vary)
    return f"{self.spec.replace(',', '-')}_s{self.seed}" + (f"_{extra}" if extra else "")


def member_command(config_file: str, member: Member, workdir: str, python: str = sys.executable) -> list[str]:
  cmd = [python, "-m", "lime_jax.main", f"--config={config_file}:{member.spec}", f"--workdir={workdir}",
         f"--config.seed={member.seed}"]
  return cmd + [f"--config.{o}" for o in member.overrides + member.vary]


def load_config_module(config_file: str):
  """An experiment config file, imported as a module (for its SWEEPS, ARMS, get_config)."""
  spec = importlib.util.spec_from_file_location("_experiment_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_member(config_file: str, member: Member, workdir: str, tag: str = "sweep") -> bool:
  """Trains one member in `workdir` (skipped when finished, resumed when interrupted), its output in
  workdir/stdout.log; False if it failed. `tag` prefixes the progress lines."""
  if is_finished(workdir):
    print(f"[{tag}] {member.name}: already finished, skipping.", flush=True)
    return True
  cmd = member_command(config_file, member, workdir)
  print(f"[{tag}] {member.name}: {shlex.join(cmd)}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "stdout.log"), "a", encoding="utf-8") as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    print(f"[{tag}] {member.name}: failed (exit {proc.returncode}); see {workdir}/stdout.log", flush=True)
  return proc.returncode == 0


def load_sweep(config_file: str, name: str) -> tuple[tuple[str, ...], ...]:
  """The override lists `SWEEPS[name]` of an experiment config file."""
  sweeps = getattr(load_config_module(config_file), "SWEEPS", {})
  if name not in sweeps:
    raise ValueError(f"--sweep={name!r}: {config_file} defines no such sweep; known: {sorted(sweeps)}.")
  return tuple(tuple(v) for v in sweeps[name])


def read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def is_finished(workdir: str) -> bool:
  """Whether a member ran to completion (a preempted or stopped run leaves status != 'completed')."""
  path = os.path.join(workdir, "final_metrics.json")
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("status") == "completed"


def member_summary(member: Member, workdir: str) -> dict[str, Any]:
  """Final train/eval metrics and step time of one finished member."""
  with open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8") as f:
    final = json.load(f)
  with open(os.path.join(workdir, "compile_report.json"), encoding="utf-8") as f:
    report = json.load(f)
  train_records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  tokens_s = [r["tokens_per_s"] for r in train_records[1:] if "tokens_per_s" in r]
  return {
      "member": member.name, "spec": member.spec, "seed": member.seed,
      "overrides": " ".join(member.overrides), "params": report.get("params"),
      "final_train_loss": final.get("train", {}).get("loss"),
      "eval_ce": final.get("eval", {}).get("ce"),
      "eval_token_accuracy": final.get("eval", {}).get("token_accuracy"),
      "eval_exact_match": final.get("eval", {}).get("exact_match"),
      "tokens_per_s": sum(tokens_s) / len(tokens_s) if tokens_s else None,
      "temp_memory_mib": report.get("memory/temp_size_mib"),
      # Greedy decoding (eval.greedy) and Seq-VCR terms; None when the member did not log them.
      "eval_greedy_exact_match": final.get("eval", {}).get("greedy_exact_match"),
      "eval_greedy_token_accuracy": final.get("eval", {}).get("greedy_token_accuracy"),
      "eval_entropy": final.get("eval", {}).get("entropy"),
      "final_seq_vcr_variance": final.get("train", {}).get("aux/seq_vcr_variance"),
      "final_seq_vcr_covariance": final.get("train", {}).get("aux/seq_vcr_covariance"),
  }


def write_tables(rows: list[dict[str, Any]], root: str) -> None:
  if not rows:
    return
  with open(os.path.join(root, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  cols = list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
  with open(os.path.join(root, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def plot_curves(members: list[Member], root: str) -> str:
  """Train loss and eval exact match against step, one line per member."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
  for member in members:
    records = read_jsonl(os.path.join(root, member.name, "metrics.jsonl"))
    train = [r for r in records if r["split"] == "train"]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=member.name)
    evals = [r for r in records if r["split"] == "eval"]
    if evals:
      ax_acc.plot([r["step"] for r in evals], [r["exact_match"] for r in evals], "o-", label=member.name)
  ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
  ax_acc.set(xlabel="step", ylabel="held-out exact match")
  ax_loss.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(root, "curves.png")
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_ablation(rows: list[dict[str, Any]], root: str) -> str | None:
  """Greedy exact match and layer entropy per member (bars); None when no member has them."""
  rows = [r for r in rows if r.get("eval_greedy_exact_match") is not None]
  if not rows:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  names = [r["member"] for r in rows]
  for ax, key, label in zip(axes, ("eval_greedy_exact_match", "eval_entropy"),
                            ("held-out exact match (greedy)", "matrix entropy (nats)")):
    ax.bar(range(len(rows)), [r[key] or 0.0 for r in rows])
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel(label)
  fig.tight_layout()
  path = os.path.join(root, "ablation.png")
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


_CONFIG = flags.DEFINE_string("config", None, "Experiment config file.", required=True)
_SPECS = flags.DEFINE_multi_string("specs", ["default"], "A preset spec per member group; repeat the flag.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
_SET = flags.DEFINE_multi_string("set", [], "Override applied to every member, e.g. train.num_steps=500.")
_ROOT = flags.DEFINE_string("root", None, "Folder holding one workdir per member.", required=True)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
_VARY = flags.DEFINE_multi_string("vary", [], "Space-separated overrides of one member group; repeat.")
_SWEEP = flags.DEFINE_string("sweep", None, "Name of an override list in the config file's SWEEPS.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  variations = [tuple(v.split()) for v in _VARY.value]
  if _SWEEP.value:
    variations += list(load_sweep(_CONFIG.value, _SWEEP.value))
  members = [Member(spec, int(seed), tuple(_SET.value), vary) for spec in _SPECS.value
             for vary in (variations or [()]) for seed in _SEEDS.value]
  os.makedirs(_ROOT.value, exist_ok=True)
  rows = []
  for member in members:
    workdir = os.path.join(_ROOT.value, member.name)
    if _DRY_RUN.value:
      print(shlex.join(member_command(_CONFIG.value, member, workdir)))
      continue
    if run_member(_CONFIG.value, member, workdir):
      rows.append(member_summary(member, workdir))
  if not _DRY_RUN.value:
    write_tables(rows, _ROOT.value)
    print(open(os.path.join(_ROOT.value, "results.md"), encoding="utf-8").read() if rows else "no results")
    print(f"[sweep] curves: {plot_curves(members, _ROOT.value)}")
    ablation = plot_ablation(rows, _ROOT.value)
    if ablation:
      print(f"[sweep] exact match and entropy: {ablation}")


if __name__ == "__main__":
  app.run(main)
