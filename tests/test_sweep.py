"""Sweep runner: member commands, and the results table from finished workdirs."""

from __future__ import annotations

import json

from lime_jax import sweep


def test_member_command_and_name():
  member = sweep.Member("default,baseline", 1, ("train.num_steps=10",))
  assert member.name == "default-baseline_num_steps=10_s1"
  assert member.group == "default-baseline_num_steps=10"
  cmd = sweep.member_command("experiments/lime_deep.py", member, "/tmp/w", python="python")
  assert cmd == ["python", "-m", "lime_jax.main", "--config=experiments/lime_deep.py:default,baseline",
                 "--workdir=/tmp/w", "--config.seed=1", "--config.train.num_steps=10"]


def test_summary_table_and_plot(tmp_path):
  member = sweep.Member("default,lime", 0, ())
  workdir = tmp_path / member.name
  workdir.mkdir()
  (workdir / "final_metrics.json").write_text(json.dumps({"status": "preempted", "train": {"loss": 0.5}}))
  assert not sweep.is_finished(str(workdir))  # an interrupted member is resumed, not skipped
  (workdir / "final_metrics.json").write_text(json.dumps(
      {"status": "completed", "train": {"loss": 0.5},
       "eval": {"ce": 0.7, "token_accuracy": 0.6, "exact_match": 0.3}}))
  assert sweep.is_finished(str(workdir))
  (workdir / "compile_report.json").write_text(json.dumps({"params": 123, "memory/temp_size_mib": 4.0}))
  records = [{"step": 100, "split": "train", "loss": 0.9, "tokens_per_s": 1000.0},
             {"step": 200, "split": "train", "loss": 0.6, "tokens_per_s": 3000.0},
             {"step": 200, "split": "eval", "exact_match": 0.3}]
  (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  row = sweep.member_summary(member, str(workdir))
  assert row["eval_exact_match"] == 0.3 and row["params"] == 123
  assert row["tokens_per_s"] == 3000.0  # the first interval (compile, warm-up) is left out
  sweep.write_tables([row], str(tmp_path))
  table = (tmp_path / "results.md").read_text().splitlines()
  assert table[0].startswith("| member | group | spec | seed") and "default-lime_s0" in table[2]
  assert (tmp_path / "results_by_group.md").read_text().count("\n") == 3
  assert (tmp_path / "results.csv").read_text().count("\n") == 2
  assert (tmp_path / sweep.plot_curves([member], str(tmp_path))).stat().st_size > 1000


def test_seed_aggregation_is_mean_and_sample_std_per_group():
  rows = [{"member": f"a_s{s}", "group": "a", "seed": s, "params": 10, "eval_exact_match": v,
           "eval_entropy": None, "spec": "a"} for s, v in ((0, 0.2), (1, 0.4), (2, 0.9))]
  rows.append({"member": "b_s0", "group": "b", "seed": 0, "params": 10, "eval_exact_match": 0.5,
               "eval_entropy": 2.0, "spec": "b"})
  by_group = {r["group"]: r for r in sweep.aggregate_seeds(rows)}
  a = by_group["a"]
  assert a["seeds"] == "0 1 2" and a["params"] == 10 and "seed_mean" not in a
  assert abs(a["eval_exact_match_mean"] - 0.5) < 1e-12
  # sample std of (0.2, 0.4, 0.9): sqrt(((-0.3)^2 + (-0.1)^2 + 0.4^2) / 2) = sqrt(0.13)
  assert abs(a["eval_exact_match_std"] - 0.13 ** 0.5) < 1e-12
  assert "eval_entropy_mean" not in a  # no seed of group a has it
  assert by_group["b"]["eval_exact_match_std"] == 0.0 and by_group["b"]["eval_entropy_mean"] == 2.0
  table = sweep.seed_table(sweep.aggregate_seeds(rows))
  assert "| a | 0 1 2 | 0.5 ± 0.36 |" in table
