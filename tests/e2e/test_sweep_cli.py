"""`python -m lime_jax.tools.sweep` / `compare`: named Seq-VCR ablation sweeps, a two-member sweep run
end to end, reuse of finished members, tables over a study folder, reference bands, portable commands."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

from lime_jax.tools import sweep
from tests.unit.test_sweep import _finished_member

REPO = pathlib.Path(__file__).resolve().parents[2]


def _sweep(*args):
  return subprocess.run(
    [sys.executable, "-m", "lime_jax.tools.sweep", "--config=experiments/seqvcr_mult.py", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout


def test_named_sweeps_print_one_command_per_ablation_point(tmp_path):
  out = _sweep("--specs=4x4,seqvcr_pause", "--sweep=lambdas", f"--workdir={tmp_path}", "--dry_run")
  lines = out.strip().splitlines()
  assert len(lines) == 6
  assert "--config.model.seq_vcr.lambda1=0.05 --config.model.seq_vcr.lambda2=0.25" in lines[3]
  assert f"--workdir={tmp_path}/4x4-seqvcr_pause_lambda1=0.05_lambda2=0.25_s0" in lines[3]
  out = _sweep("--specs=5x5,seqvcr_pause", "--sweep=proj_dim", f"--workdir={tmp_path}", "--dry_run")
  assert [l.split()[-1] for l in out.strip().splitlines()] == [
    f"--config.model.seq_vcr.proj_dim={p}" for p in (512, 1024, 2048, 4096)
  ]


def test_two_member_sweep_runs_and_collects_exact_match_and_entropy(tmp_path):
  out = _sweep(
    "--specs=tiny,seqvcr_pause",
    "--vary=model.seq_vcr.proj_dim=16",
    "--vary=model.seq_vcr.proj_dim=32 model.seq_vcr.lambda2=0.5",
    "--set=train.num_steps=2",
    f"--workdir={tmp_path}",
  )
  names = [
    "tiny-seqvcr_pause_num_steps=2_proj_dim=16_s0",
    "tiny-seqvcr_pause_num_steps=2_proj_dim=32_lambda2=0.5_s0",
  ]
  for name in names:
    final = json.loads((tmp_path / name / "final_metrics.json").read_text())
    assert final["status"] == "completed"
    assert {"greedy_exact_match", "entropy", "greedy_pos_acc/00", "entropy_layer/00"} <= set(final["eval"])
    # the Seq-VCR layer is the final block (of 2): its entropy is the per-layer figure of block 1
    assert abs(final["eval"]["entropy_layer/01"] - final["eval"]["entropy"]) < 1e-5
    assert final["eval"]["entropy_layer/00"] != final["eval"]["entropy"]
    assert {"ce", "aux/seq_vcr_variance", "aux/seq_vcr_covariance"} <= set(final["train"])
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["model"]["seq_vcr"]["proj_dim"] == (16 if "proj_dim=16" in name else 32)
  rows = list(csv.DictReader((tmp_path / "results.csv").open()))
  assert [r["member"] for r in rows] == names
  assert all(r["eval_greedy_exact_match"] != "" and float(r["eval_entropy"]) > 0 for r in rows)
  assert all(float(r["wall_min"]) > 0 and r["pos_acc_00"] != "" and r["entropy_layer_01"] for r in rows)
  wall = json.loads((tmp_path / names[0] / "wall_time.json").read_text())["seconds"]
  assert abs(float(rows[0]["wall_min"]) - wall / 60) < 1e-9
  assert "eval_greedy_exact_match" in (tmp_path / "results.md").read_text()
  pooled = list(csv.DictReader((tmp_path / "results_by_group.csv").open()))
  assert [r["group"] for r in pooled] == [n[: -len("_s0")] for n in names]
  assert all(float(r["eval_greedy_exact_match_std"]) == 0.0 for r in pooled)  # one seed each
  assert "pooled over seeds" in out
  assert (tmp_path / "ablation.png").stat().st_size > 1000 and "ablation.png" in out


def run_sweep(*flags: str) -> subprocess.CompletedProcess:
  """`python -m lime_jax.tools.sweep FLAGS` from the repository root; asserts that it succeeded."""
  proc = subprocess.run(
    [sys.executable, "-m", "lime_jax.tools.sweep", *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def test_a_variation_with_the_presets_own_values_reuses_the_finished_plain_member(tmp_path):
  config = "experiments/seqvcr_mult.py"
  own = sweep.Member("tiny,seqvcr_pause", 1, (), ("model.seq_vcr.lambda1=1.0", "model.seq_vcr.lambda2=0.004"))
  other = sweep.Member(
    "tiny,seqvcr_pause", 1, (), ("model.seq_vcr.lambda1=0.5", "model.seq_vcr.lambda2=0.004")
  )
  proj = sweep.Member("tiny,seqvcr_pause", 1, (), ("model.seq_vcr.proj_dim=64",))  # tiny's projection
  arms = tmp_path / "arms"
  assert sweep.reusable_source(config, own, [str(arms)]) is None  # nothing finished there yet
  source = _finished_member(arms, "tiny-seqvcr_pause_s1", 0.75)
  assert sweep.reusable_source(config, own, [str(arms)]) == str(source)
  assert sweep.reusable_source(config, proj, [str(arms)]) == str(source)
  assert sweep.reusable_source(config, other, [str(arms)]) is None  # another lambda1: must train
  assert sweep.reusable_source(config, own, []) is None

  proc = run_sweep(
    f"--config={config}",
    "--specs=tiny,seqvcr_pause",
    "--vary=model.seq_vcr.lambda1=1.0 model.seq_vcr.lambda2=0.004",
    "--seeds=1",
    f"--workdir={tmp_path / 'lambdas'}",
    f"--reuse={arms}",
  )
  member = tmp_path / "lambdas" / own.name
  assert "reusing its results" in proc.stdout and not (member / "checkpoints").exists()  # not trained
  assert (member / "reused_from.txt").read_text().strip() == str(source)
  rows = list(csv.DictReader((tmp_path / "lambdas" / "results.csv").open()))
  assert [(r["member"], float(r["eval_greedy_exact_match"]), float(r["wall_min"])) for r in rows] == [
    (own.name, 0.75, 2.0)
  ]


def test_tables_cover_every_finished_member_of_the_folder(tmp_path):
  """A sweep over part of a study (here: nothing run, --tables_only, naming one seed) tabulates every
  finished member recorded in the folder, its own first, so the study's tables are never replaced by
  those of one invocation; unrecorded folders and unfinished members are left out."""
  root = tmp_path / "study"
  spec_a, spec_b = sweep.Member("tiny,vanilla", 0, ()), sweep.Member("tiny,vanilla", 1, ())
  other = sweep.Member("tiny,pause", 0, (), ("model.seq_vcr.proj_dim=64",))
  for member, em in ((spec_a, 0.25), (spec_b, 0.5), (other, 0.75)):
    sweep.write_member(member, str(_finished_member(root, member.name, em)))
  assert sweep.read_member(str(root / other.name)) == other
  _finished_member(root, "stray_s0", 1.0)  # no member.json: not a member of this study
  unfinished = sweep.Member("tiny,seqvcr", 0, ())
  sweep.write_member(unfinished, str(root / unfinished.name))
  run_sweep(
    "--config=experiments/seqvcr_mult.py",
    "--specs=tiny,vanilla",
    "--seeds=1",
    f"--workdir={root}",
    "--tables_only",
  )
  rows = list(csv.DictReader((root / "results.csv").open()))
  assert [(r["member"], float(r["eval_greedy_exact_match"])) for r in rows] == [
    (spec_b.name, 0.5),
    (other.name, 0.75),
    (spec_a.name, 0.25),
  ]
  groups = [r["group"] for r in csv.DictReader((root / "results_by_group.csv").open())]
  assert sorted(groups) == sorted({spec_a.group, other.group})
  assert (root / "points.png").stat().st_size > 1000  # the varied member's ablation plot


def test_points_plot_draws_the_plain_members_of_reference_folders(tmp_path):
  """--references=DIR: the plain members of another folder (vanilla seeds) become one band on the
  exact-match panel, labelled mean ± std (seeds); varied members there are not references."""
  arms = tmp_path / "arms"
  for member, em in (
    (sweep.Member("tiny,vanilla", 0, ()), 0.2),
    (sweep.Member("tiny,vanilla", 1, ()), 0.4),
    (sweep.Member("tiny,pause", 0, (), ("model.seq_vcr.proj_dim=64",)), 0.9),
  ):
    sweep.write_member(member, str(_finished_member(arms, member.name, em)))
  references = sweep.reference_rows([str(arms)])
  assert sorted((r["group"], r["eval_greedy_exact_match"]) for r in references) == [
    ("tiny-vanilla", 0.2),
    ("tiny-vanilla", 0.4),
  ]
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  _, ax = plt.subplots()
  sweep.draw_references(ax, references, "eval_greedy_exact_match")
  (line,) = ax.get_lines()
  assert abs(line.get_ydata()[0] - 0.3) < 1e-12
  assert line.get_label() == "tiny-vanilla: 0.300 ± 0.14 (2)"
  plt.close("all")
  study = tmp_path / "study"
  varied = sweep.Member("tiny,seqvcr_pause", 0, (), ("model.seq_vcr.proj_dim=64",))
  sweep.write_member(varied, str(_finished_member(study, varied.name, 0.7)))
  run_sweep(
    "--config=experiments/seqvcr_mult.py", f"--workdir={study}", "--tables_only", f"--references={arms}"
  )
  assert (study / "points.png").stat().st_size > 1000


# -------------------------------------------------------------------------------------------- sweep CLI
def _cli(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


def test_sweep_and_compare_share_one_convention_and_print_portable_commands(tmp_path):
  config = os.path.join(REPO, "experiments", "lime_deep.py")  # absolute: printed relative to the repo
  sweep_out = _cli(
    "lime_jax.tools.sweep", f"--config={config}", "--specs=tiny,lime", f"--workdir={tmp_path}/s", "--dry_run"
  )
  assert sweep_out.returncode == 0, sweep_out.stderr[-2000:]
  assert sweep_out.stdout.split() == [
    "python",
    "-m",
    "lime_jax.main",
    "--config=experiments/lime_deep.py:tiny,lime",
    f"--workdir={tmp_path}/s/tiny-lime_s0",
    "--config.seed=0",
  ]
  compare_out = _cli(
    "lime_jax.tools.compare",
    "--config=experiments/compare_topologies.py",
    "--arms=plain,lime",
    "--seeds=0,1",
    f"--workdir={tmp_path}/c",
    "--set=train.num_steps=3",
    "--dry_run",
  )
  assert compare_out.returncode == 0, compare_out.stderr[-2000:]
  lines = compare_out.stdout.strip().splitlines()
  assert len(lines) == 4 and all(l.startswith("python -m lime_jax.main --config=experiments/") for l in lines)
  assert sys.executable not in compare_out.stdout
  missing = _cli("lime_jax.tools.compare", "--config=experiments/compare_topologies.py", "--dry_run")
  assert missing.returncode != 0 and "--workdir=DIR are required" in missing.stderr
