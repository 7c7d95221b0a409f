"""The Seq-VCR ablation sweeps: named override lists, per-member workdirs, table and plot (2 tiny members)."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

from lime_jax.tools import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def test_member_name_and_command_with_variation():
  member = sweep.Member("default,seqvcr", 0, ("train.num_steps=5",), ("model.seq_vcr.proj_dim=512",))
  assert member.name == "default-seqvcr_num_steps=5_proj_dim=512_s0"
  assert sweep.member_command("e.py", member, "/w", python="p")[-2:] == [
    "--config.train.num_steps=5",
    "--config.model.seq_vcr.proj_dim=512",
  ]
