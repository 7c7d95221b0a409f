"""Sweep runner: run the members of a comparison one after another, then tabulate and plot them.

  python -m lime_jax.tools.sweep --config=experiments/lime_deep.py --specs=default,baseline \
      --specs=default,lime --seeds=0,1 --workdir=workdirs/lime_deep_cmp [--set=train.num_steps=500 ...] \
      [--dry_run]

Each member (spec x variation x seed) trains with `python -m lime_jax.main` in its own workdir
WORKDIR/<spec>[_<field>=<value>...]_s<seed> (e.g. `4x4-seqvcr_pause_lambda1=0.5_lambda2=0.002_s1`; a
finished member is skipped, an interrupted one resumes). `--dry_run` prints the commands instead, to run
them on a cluster (`python -m lime_jax.main`, the config path relative to the current directory). The
results land in WORKDIR/results.md, WORKDIR/results.csv (one row per member), WORKDIR/results_by_group.md
and .csv (seeds pooled: mean ± std of every metric per spec and variation), WORKDIR/curves.png and
WORKDIR/curves.md (held-out exact match at every eval step, per member and pooled over seeds) and,
when the members ran greedy evaluation (eval.greedy), WORKDIR/ablation.png (greedy exact match and
layer entropy per member) and, for an ablation (`--vary` / `--sweep`), WORKDIR/points.png (the same per
ablation point: mean ± std over seeds, each seed a dot; a log2 axis when one numeric field varies;
`--references=DIR` adds the plain members of another sweep folder, e.g. vanilla, as bands).
The tables and plots cover every finished member recorded in WORKDIR (each member's workdir holds its
`member.json`), the invocation's own first, so sweeps over parts of a study (one arm, one seed) leave
the tables of the whole study; `--tables_only` runs nothing and rewrites them (recording the finished
members it names that have no `member.json` yet).

Variations (ablations): `--vary="model.seq_vcr.lambda1=0.5 model.seq_vcr.lambda2=0.002"` (repeatable; one
member group per flag), or `--sweep=NAME` for the override lists in the config file's `SWEEPS` dict
(e.g. experiments/seqvcr_mult.py: `lambdas`, `proj_dim`). `--reuse=DIR` lets a variation that only sets
the preset's own values (the lambda pair or projection the preset already uses) copy the results of the
plain member finished in another sweep's DIR instead of training the same config again. Each member's
wall time (all its launches) lands in <member>/wall_time.json and the `wall_min` column.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

import ast
import csv
import dataclasses
import importlib.util
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

from lime_jax.probes.plotting import LINE_STYLES
from lime_jax.runtime import fileio


@dataclasses.dataclass(frozen=True)
class Member:
  spec: str
  seed: int
  overrides: tuple[str, ...]
  vary: tuple[str, ...] = ()  # this member's own overrides (an ablation point)

  @property
  def group(self) -> str:
    """The member's name without its seed: `<spec>[_<field>=<value>...]` (a.b.c=0.5 -> c=0.5)."""
    short = lambda o: o.partition("=")[0].split(".")[-1] + "=" + o.partition("=")[2]
    return "_".join([self.spec.replace(",", "-"), *(short(o) for o in self.overrides + self.vary)])

  @property
  def name(self) -> str:
    """Workdir name: the group, then the seed (`seqvcr_pause_lambda1=0.5_lambda2=0.002_s1`)."""
    return f"{self.group}_s{self.seed}"


MEMBER_FILE = "member.json"  # in each member's workdir: what it is, so a folder's tables cover it


def write_member(member: Member, workdir: str) -> None:
  """Records `member` (spec, seed, overrides) in its workdir."""
  fileio.makedirs(workdir)
  fileio.write_text(fileio.join(workdir, MEMBER_FILE), json.dumps(dataclasses.asdict(member)))


def read_member(workdir: str) -> Member | None:
  """The member recorded in `workdir`, or None (not a member's workdir, or run before members were
  recorded)."""
  path = fileio.join(workdir, MEMBER_FILE)
  if not fileio.exists(path):
    return None
  fields = fileio.read_json(path)
  return Member(fields["spec"], int(fields["seed"]), tuple(fields["overrides"]), tuple(fields["vary"]))


def record_finished(root: str, members: list[Member]) -> list[Member]:
  """Writes `member.json` into each finished member's workdir that lacks one (run by a sweep from before
  members were recorded, or by hand), so the folder's tables cover it from now on; returns those."""
  recorded = []
  for member in members:
    workdir = fileio.join(root, member.name)
    if is_finished(workdir) and read_member(workdir) is None:
      write_member(member, workdir)
      recorded.append(member)
  return recorded


def folder_members(root: str, first: list[Member] = ()) -> list[Member]:
  """Every finished member in the folder `root`: those of `first` (this invocation's, in its order) that
  finished, then the other recorded ones, by name. A folder's tables cover all of them, so a sweep run
  over part of a study (one arm, one seed) leaves the tables of the whole study."""
  finished = [m for m in first if is_finished(fileio.join(root, m.name))]
  names = {m.name for m in finished}
  others = []
  for entry in fileio.listdir(root) if fileio.isdir(root) else []:
    member = read_member(fileio.join(root, entry))
    if member and member.name == entry and entry not in names and is_finished(fileio.join(root, entry)):
      others.append(member)
  return finished + others


def member_command(config_file: str, member: Member, workdir: str, python: str = sys.executable) -> list[str]:
  cmd = [
    python,
    "-m",
    "lime_jax.main",
    f"--config={config_file}:{member.spec}",
    f"--workdir={workdir}",
    f"--config.seed={member.seed}",
  ]
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
  fileio.makedirs(workdir)
  log_path = fileio.join(workdir, "stdout.log")
  start = time.time()
  if fileio.is_remote(workdir):  # a bucket cannot be appended to while the member runs
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    fileio.append_text(log_path, proc.stdout)
  else:
    with open(log_path, "a", encoding="utf-8") as log:
      proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
  add_wall_time(workdir, time.time() - start)
  if proc.returncode != 0:
    print(f"[{tag}] {member.name}: failed (exit {proc.returncode}); see {workdir}/stdout.log", flush=True)
  return proc.returncode == 0


WALL_TIME_FILE = "wall_time.json"


def add_wall_time(workdir: str, seconds: float) -> float:
  """Adds `seconds` to the member's wall time (summed over the launches of an interrupted member, start-up
  and compiles included) in WORKDIR/wall_time.json; returns the total."""
  path = fileio.join(workdir, WALL_TIME_FILE)
  total = (fileio.read_json(path)["seconds"] if fileio.exists(path) else 0.0) + float(seconds)
  fileio.write_text(path, json.dumps({"seconds": total}))
  return total


RESULT_FILES = ("final_metrics.json", "compile_report.json", "metrics.jsonl", "config.json", WALL_TIME_FILE)


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string, as --config.x=abc passes it


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return math.isclose(float(a), float(b), rel_tol=1e-12)
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def is_preset_value(config: Any, override: str) -> bool:
  """Whether `field=value` sets a field of `config` (a ConfigDict) to the value it already has."""
  field, _, text = override.partition("=")
  value = config
  for part in field.split("."):
    if part not in value:
      return False
    value = value[part]
  return _same(value, _parse_value(text))


def reusable_source(config_file: str, member: Member, reuse_dirs: list[str]) -> str | None:
  """A finished workdir in `reuse_dirs` that ran `member`'s very config: when every override of the
  member's variation is the preset's own value (e.g. the lambda pair a preset already uses), the member
  is the plain `<spec>[_<set overrides>]_s<seed>` member, which another sweep (an arms comparison) may
  have run. None when there is none."""
  if not reuse_dirs or not member.vary:
    return None
  config = load_config_module(config_file).get_config(member.spec)
  if not all(is_preset_value(config, o) for o in member.vary):
    return None
  plain = dataclasses.replace(member, vary=()).name
  return next((fileio.join(d, plain) for d in reuse_dirs if is_finished(fileio.join(d, plain))), None)


def copy_results(source: str, workdir: str) -> None:
  """Copies a finished member's result files (not its checkpoints) and notes where they came from."""
  fileio.makedirs(workdir)
  for name in RESULT_FILES:
    if fileio.exists(fileio.join(source, name)):
      fileio.write_text(fileio.join(workdir, name), fileio.read_text(fileio.join(source, name)))
  fileio.write_text(fileio.join(workdir, "reused_from.txt"), source + "\n")


def load_sweep(config_file: str, name: str) -> tuple[tuple[str, ...], ...]:
  """The override lists `SWEEPS[name]` of an experiment config file."""
  sweeps = getattr(load_config_module(config_file), "SWEEPS", {})
  if name not in sweeps:
    raise ValueError(f"--sweep={name!r}: {config_file} defines no such sweep; known: {sorted(sweeps)}.")
  return tuple(tuple(v) for v in sweeps[name])


def read_jsonl(path: str) -> list[dict[str, Any]]:
  if not fileio.exists(path):
    return []
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


def is_finished(workdir: str) -> bool:
  """Whether a member ran to completion (a preempted or stopped run leaves status != 'completed')."""
  path = fileio.join(workdir, "final_metrics.json")
  if not fileio.exists(path):
    return False
  return fileio.read_json(path).get("status") == "completed"


def member_summary(member: Member, workdir: str) -> dict[str, Any]:
  """Final train/eval metrics and step time of one finished member."""
  final = fileio.read_json(fileio.join(workdir, "final_metrics.json"))
  report = fileio.read_json(fileio.join(workdir, "compile_report.json"))
  train_records = [r for r in read_jsonl(fileio.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  tokens_s = [r["tokens_per_s"] for r in train_records[1:] if "tokens_per_s" in r]
  wall_path = fileio.join(workdir, WALL_TIME_FILE)
  wall_min = fileio.read_json(wall_path)["seconds"] / 60 if fileio.exists(wall_path) else None
  return {
    "member": member.name,
    "group": member.group,
    "spec": member.spec,
    "seed": member.seed,
    "overrides": " ".join(member.overrides),
    "vary": " ".join(o.partition("=")[0].split(".")[-1] + "=" + o.partition("=")[2] for o in member.vary),
    "params": report.get("params"),
    "final_train_loss": final.get("train", {}).get("loss"),
    "eval_ce": final.get("eval", {}).get("ce"),
    "eval_token_accuracy": final.get("eval", {}).get("token_accuracy"),
    "eval_exact_match": final.get("eval", {}).get("exact_match"),
    "tokens_per_s": sum(tokens_s) / len(tokens_s) if tokens_s else None,
    "temp_memory_mib": report.get("memory/temp_size_mib"),
    "wall_min": wall_min,  # minutes the sweep spent on the member (None: not run by the sweep)
    # Greedy decoding (eval.greedy) and Seq-VCR terms; None when the member did not log them.
    "eval_greedy_exact_match": final.get("eval", {}).get("greedy_exact_match"),
    "eval_greedy_token_accuracy": final.get("eval", {}).get("greedy_token_accuracy"),
    "eval_entropy": final.get("eval", {}).get("entropy"),
    "final_seq_vcr_variance": final.get("train", {}).get("aux/seq_vcr_variance"),
    "final_seq_vcr_covariance": final.get("train", {}).get("aux/seq_vcr_covariance"),
    # Per answer position (greedy) and per block (entropy), as logged by lime_jax/evals/greedy_answers.py.
    **{
      k.replace("greedy_pos_acc/", "pos_acc_").replace("entropy_layer/", "entropy_layer_"): v
      for k, v in final.get("eval", {}).items()
      if k.startswith(("greedy_pos_acc/", "entropy_layer/"))
    },
  }


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_and_std(values: list[float]) -> tuple[float, float]:
  """(mean, sample std with ddof=1; 0 for one value) of a non-empty list: the seed statistics."""
  mean = sum(values) / len(values)
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
  return mean, math.sqrt(var)


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per member group (spec and overrides, seeds pooled): `seeds`, and for every numeric metric
  `<metric>_mean` and `<metric>_std` (sample std, ddof=1; 0 for one seed) over the seeds that have it."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(row["group"], []).append(row)
  skip = {"seed", "params"}
  out = []
  for group, members in groups.items():
    agg: dict[str, Any] = {"group": group, "seeds": " ".join(str(m["seed"]) for m in members)}
    agg["params"] = members[0].get("params")
    for key in members[0]:
      values = [m[key] for m in members if _is_number(m.get(key))]
      if key in skip or not values:
        continue
      agg[f"{key}_mean"], agg[f"{key}_std"] = mean_and_std(values)
    out.append(agg)
  return out


def seed_table(aggregated: list[dict[str, Any]]) -> str:
  """Markdown table of `aggregate_seeds` rows, each metric as `mean ± std`."""
  metrics = [k[: -len("_mean")] for k in aggregated[0] if k.endswith("_mean")] if aggregated else []
  lines = ["| group | seeds | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
  for row in aggregated:
    cells = [f"{row[m + '_mean']:.4g} ± {row[m + '_std']:.2g}" if m + "_mean" in row else "" for m in metrics]
    lines.append(f"| {row['group']} | {row['seeds']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _write_csv(rows: list[dict[str, Any]], path: str) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  fileio.write_text(path, table.getvalue())


def write_tables(rows: list[dict[str, Any]], root: str) -> None:
  """results.csv / results.md (one row per member) and, pooled over seeds, results_by_group.csv /
  results_by_group.md (mean ± std)."""
  if not rows:
    return
  aggregated = aggregate_seeds(rows)
  _write_csv(aggregated, fileio.join(root, "results_by_group.csv"))
  fileio.write_text(fileio.join(root, "results_by_group.md"), seed_table(aggregated))
  _write_csv(rows, fileio.join(root, "results.csv"))
  cols = list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
  fileio.write_text(fileio.join(root, "results.md"), "\n".join(lines) + "\n")


def save_figure(fig: Any, path: str, dpi: int = 90) -> str:
  """Writes a matplotlib figure as PNG to `path` (local or gs://) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  fileio.write_bytes(path, buffer.getvalue())
  return path


def eval_curves(members: list[Member], root: str, metric: str = "exact_match") -> dict[str, dict[int, float]]:
  """{member name: {eval step: `metric`}} from each member's metrics.jsonl (the last record per step)."""
  curves = {}
  for member in members:
    records = read_jsonl(fileio.join(root, member.name, "metrics.jsonl"))
    points = {r["step"]: r[metric] for r in records if r["split"] == "eval" and _is_number(r.get(metric))}
    if points:
      curves[member.name] = dict(sorted(points.items()))
  return curves


def curve_table(members: list[Member], root: str, metric: str = "exact_match") -> str:
  """Markdown: held-out `metric` at every eval step, one row per member, then one per member group
  (seeds pooled: mean ± sample std at each step, over the seeds that reached it)."""
  curves = eval_curves(members, root, metric)
  if not curves:
    return ""
  steps = sorted({step for points in curves.values() for step in points})
  header = [f"| {metric} at step | " + " | ".join(map(str, steps)) + " |", "|" + "---|" * (len(steps) + 1)]
  rows = [
    f"| {name} | " + " | ".join(f"{p[s]:.3f}" if s in p else "" for s in steps) + " |"
    for name, p in curves.items()
  ]
  groups: dict[str, list[dict[int, float]]] = {}
  for member in members:
    if member.name in curves:
      groups.setdefault(member.group, []).append(curves[member.name])
  pooled = []
  for group, seeds in groups.items():
    cells = []
    for step in steps:
      values = [p[step] for p in seeds if step in p]
      cells.append("{:.3f} ± {:.2f} ({})".format(*mean_and_std(values), len(values)) if values else "")
    pooled.append(f"| {group} (mean ± std (seeds)) | " + " | ".join(cells) + " |")
  return "\n".join(header + rows + pooled) + "\n"


def seed_line_styles(members: list[Member]) -> dict[int, str]:
  """{seed: matplotlib line style}, in seed order (the same style for a seed in every group)."""
  seeds = sorted({member.seed for member in members})
  return {seed: LINE_STYLES[i % len(LINE_STYLES)] for i, seed in enumerate(seeds)}


def curve_styles(members: list[Member]) -> dict[str, dict[str, Any]]:
  """Matplotlib keyword arguments per member name: one colour per member group, one line style per
  seed, and a legend label on each group's first member only (so the legend lists groups)."""
  groups = list(dict.fromkeys(member.group for member in members))
  colours = {
    group: f"C{i}" if len(groups) <= 10 else _wide_palette(i, len(groups)) for i, group in enumerate(groups)
  }
  line_styles = seed_line_styles(members)
  styles, labelled = {}, set()
  for member in members:
    styles[member.name] = {
      "color": colours[member.group],
      "linestyle": line_styles[member.seed],
      "label": None if member.group in labelled else member.group,
    }
    labelled.add(member.group)
  return styles


def _wide_palette(index: int, count: int) -> tuple[float, float, float, float]:
  """Colour `index` of `count` evenly spaced on a cyclic colour map (more groups than tab10 holds)."""
  from matplotlib import colormaps

  return colormaps["hsv"](index / count)


def plot_curves(members: list[Member], root: str) -> str:
  """Train loss and held-out exact match against step: a colour per member group, a line style per
  seed (legend below the plots)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  styles = curve_styles(members)
  line_styles = seed_line_styles(members)
  seed_legend = line_styles if len(line_styles) > 1 else {}  # one seed: no seed entries
  legend_rows = -(-(sum(s["label"] is not None for s in styles.values()) + len(seed_legend)) // 3)
  height = 3.6 + 0.2 * legend_rows
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, height))
  for member in members:
    records = read_jsonl(fileio.join(root, member.name, "metrics.jsonl"))
    train = [r for r in records if r["split"] == "train"]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, **styles[member.name])
    evals = [r for r in records if r["split"] == "eval"]
    if evals:
      ax_acc.plot(
        [r["step"] for r in evals], [r["exact_match"] for r in evals], marker="o", ms=3, **styles[member.name]
      )
  ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
  ax_acc.set(xlabel="step", ylabel="held-out exact match")
  handles, labels = ax_loss.get_legend_handles_labels()
  for seed, line_style in seed_legend.items():  # a grey proxy line per seed
    handles.append(plt.Line2D([], [], color="grey", linestyle=line_style))
    labels.append(f"seed {seed}")
  if handles:
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, (0.16 * legend_rows + 0.05) / height, 1, 1))
  return save_figure(fig, fileio.join(root, "curves.png"))


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
  for ax, key, label in zip(
    axes,
    ("eval_greedy_exact_match", "eval_entropy"),
    ("held-out exact match (greedy)", "matrix entropy (nats)"),
  ):
    ax.bar(range(len(rows)), [r[key] or 0.0 for r in rows])
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel(label)
  fig.tight_layout()
  return save_figure(fig, fileio.join(root, "ablation.png"))


ABLATION_METRICS = (
  ("eval_greedy_exact_match", "held-out exact match (greedy)"),
  ("eval_entropy", "matrix entropy (nats)"),
)


def ablation_x(groups: list[list[dict[str, Any]]]) -> tuple[list[float], list[str], str | None]:
  """x positions, tick labels and axis name of the ablation points: the value itself (log2 axis) when
  every point varies the same one numeric field (e.g. proj_dim), else the points in order."""
  varies = [g[0]["vary"].split() for g in groups]
  fields = {tuple(o.partition("=")[0] for o in v) for v in varies}
  if len(fields) == 1 and len(next(iter(fields))) == 1:
    values = [_parse_value(v[0].partition("=")[2]) for v in varies]
    if all(_is_number(x) and x > 0 for x in values):
      return [float(x) for x in values], [f"{x:g}" for x in values], next(iter(fields))[0]
  return list(range(len(groups))), [g[0]["vary"].replace(" ", "\n") for g in groups], None


def reference_rows(folders: list[str]) -> list[dict[str, Any]]:
  """Summaries of the plain (not varied) finished members of other sweep folders, e.g. an arms
  comparison's vanilla and pause members, to draw beside an ablation."""
  return [
    member_summary(member, fileio.join(folder, member.name))
    for folder in folders
    for member in folder_members(folder)
    if not member.vary
  ]


def draw_references(ax: Any, references: list[dict[str, Any]], key: str) -> None:
  """Each reference group's mean ± std of `key` as a dashed line over a shaded band, in the legend."""
  by_group: dict[str, list[float]] = {}
  for row in references:
    if _is_number(row.get(key)):
      by_group.setdefault(row["group"], []).append(row[key])
  for i, (group, values) in enumerate(by_group.items()):
    mean, std = mean_and_std(values)
    color = f"C{i + 2}"
    label = f"{group}: {mean:.3f} ± {std:.2f} ({len(values)})" if len(values) > 1 else f"{group}: {mean:.3f}"
    ax.axhline(mean, ls="--", lw=1, color=color, label=label)
    if len(values) > 1:
      ax.axhspan(mean - std, mean + std, color=color, alpha=0.08)
  if by_group:
    ax.legend(fontsize=7, loc="best")


def plot_points(rows: list[dict[str, Any]], root: str, references: list[dict[str, Any]] = ()) -> str | None:
  """One ablation's plot (points.png): greedy exact match and matrix entropy per ablation point (the
  members' `vary`), mean ± sample std over seeds as error bars, every seed as a dot; the exact-match
  panel also draws each `references` group (`reference_rows`) as a band (entropies of other arms are
  left out: their examples can have other lengths). None without varied members that logged them."""
  rows = [r for r in rows if r.get("vary") and r.get("eval_greedy_exact_match") is not None]
  if not rows:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_group: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    by_group.setdefault(row["group"], []).append(row)
  groups = list(by_group.values())
  xs, labels, field = ablation_x(groups)
  width = max(5.0, 1.3 * len(groups))  # room for one two-line tick label per point
  fig, axes = plt.subplots(1, len(ABLATION_METRICS), figsize=(width * len(ABLATION_METRICS), 3.8))
  for ax, (key, label) in zip(axes, ABLATION_METRICS):
    for x, members in zip(xs, groups):
      values = [m[key] for m in members if _is_number(m.get(key))]
      if not values:
        continue
      mean, std = mean_and_std(values)
      ax.errorbar([x], [mean], yerr=[std], fmt="o", color="C0", capsize=4)
      ax.plot([x] * len(values), values, ".", color="C1", alpha=0.7)
    ax.set_xticks(xs, labels, fontsize=7)
    if field:
      ax.set_xscale("log", base=2)
      ax.set_xticks(xs, labels, fontsize=7)
      ax.minorticks_off()
    ax.set(xlabel=field or "ablation point", ylabel=label)
    if key == "eval_greedy_exact_match":
      draw_references(ax, list(references), key)
  axes[0].set_title("mean ± std over seeds (bars), seeds (dots)", fontsize=8)
  fig.tight_layout()
  return save_figure(fig, fileio.join(root, "points.png"))


def define_common_flags() -> None:
  """The flags `sweep` and `compare` share (defined when either runs as a program, not on import)."""
  flags.DEFINE_string(
    "config", None, "Experiment config file (its presets are picked by --specs / --preset)."
  )
  flags.DEFINE_string("workdir", None, "Folder holding one workdir per member, the tables and plots.")
  flags.DEFINE_list("seeds", ["0"], "Seeds (every member group runs each).")
  flags.DEFINE_multi_string("set", [], "Override applied to every member, e.g. train.num_steps=500.")
  flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the commands (portable: `python -m lime_jax.main`, the "
    "config path relative to here) instead of running them.",
  )


def define_flags() -> None:
  define_common_flags()
  flags.DEFINE_multi_string("specs", ["default"], "A preset spec per member group; repeat the flag.")
  flags.DEFINE_multi_string("vary", [], "Space-separated overrides of one member group; repeat.")
  flags.DEFINE_string("sweep", None, "Name of an override list in the config file's SWEEPS.")
  flags.DEFINE_list(
    "reuse",
    [],
    "Sweep workdirs whose finished members are reused (result files copied, "
    "not rerun) by a member of this sweep that runs the same config: one whose variation "
    "only sets the preset's own values.",
  )
  flags.DEFINE_bool(
    "tables_only",
    False,
    "Run nothing: write the tables, curves and plots over every finished member of --workdir "
    "(also those other invocations ran) and print them.",
  )
  flags.DEFINE_list(
    "references",
    [],
    "Folders of other sweeps (e.g. the arms comparison) whose plain members' greedy exact match "
    "points.png draws as reference bands (mean ± std over seeds).",
  )


def portable_path(path: str) -> str:
  """`path` relative to the current directory when it lies below it (for commands run elsewhere)."""
  if not fileio.is_remote(path) and os.path.isabs(path) and path.startswith(os.getcwd() + os.sep):
    return os.path.relpath(path)
  return path


def dry_run_command(config_file: str, member: Member, workdir: str) -> str:
  """The command of one member for a cluster: plain `python`, the config path relative to here."""
  return shlex.join(member_command(portable_path(config_file), member, workdir, python="python"))


def workdir_flag() -> str:
  """--workdir; a UsageError when it or --config is missing."""
  FLAGS = flags.FLAGS
  if not FLAGS.config or not FLAGS.workdir:
    raise app.UsageError("--config=FILE and --workdir=DIR are required.")
  return FLAGS.workdir


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  root = workdir_flag()
  variations = [tuple(v.split()) for v in FLAGS.vary]
  if FLAGS.sweep:
    variations += list(load_sweep(FLAGS.config, FLAGS.sweep))
  members = [
    Member(spec, int(seed), tuple(FLAGS.set), vary)
    for spec in FLAGS.specs
    for vary in (variations or [()])
    for seed in FLAGS.seeds
  ]
  if FLAGS.tables_only and (FLAGS.dry_run or FLAGS.reuse):
    raise app.UsageError("--tables_only runs nothing: it takes neither --dry_run nor --reuse.")
  if FLAGS.dry_run:
    for member in members:
      print(dry_run_command(FLAGS.config, member, fileio.join(root, member.name)))
    return
  fileio.makedirs(root)
  if FLAGS.tables_only:
    record_finished(root, members)
  for member in [] if FLAGS.tables_only else members:
    workdir = fileio.join(root, member.name)
    source = None if is_finished(workdir) else reusable_source(FLAGS.config, member, FLAGS.reuse)
    if source:
      print(
        f"[sweep] {member.name}: the preset's own config, finished in {source}; reusing its results.",
        flush=True,
      )
      copy_results(source, workdir)
    write_member(member, workdir)
    run_member(FLAGS.config, member, workdir)
  write_folder_tables(root, members, FLAGS.references)


def write_folder_tables(root: str, members: list[Member] = (), references: list[str] = ()) -> None:
  """Tables, curves and plots over every finished member of the folder (`folder_members`), printed;
  `references`: folders whose plain members points.png draws as bands (`reference_rows`)."""
  members = folder_members(root, members)
  rows = [member_summary(member, fileio.join(root, member.name)) for member in members]
  write_tables(rows, root)
  print(fileio.read_text(fileio.join(root, "results.md")) if rows else "no results")
  if rows:
    print("[sweep] pooled over seeds (mean ± std):")
    print(fileio.read_text(fileio.join(root, "results_by_group.md")))
  table = curve_table(members, root)
  if table:
    fileio.write_text(fileio.join(root, "curves.md"), table)
  print(
    f"[sweep] curves: {plot_curves(members, root)}" + (f", {fileio.join(root, 'curves.md')}" if table else "")
  )
  ablation = plot_ablation(rows, root)
  if ablation:
    print(f"[sweep] exact match and entropy: {ablation}")
  points = plot_points(rows, root, reference_rows(list(references)))
  if points:
    print(f"[sweep] per ablation point, seeds pooled: {points}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
