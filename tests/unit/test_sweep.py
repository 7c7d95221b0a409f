"""Sweep runner: member commands and names, the results tables from finished workdirs, seed aggregation,
the ablation plot's axis and reference bands, portable paths."""

from __future__ import annotations

import json
import os

from lime_jax.tools import compare, sweep


def test_member_command_and_name():
  member = sweep.Member("default,baseline", 1, ("train.num_steps=10",))
  assert member.name == "default-baseline_num_steps=10_s1"
  assert member.group == "default-baseline_num_steps=10"
  cmd = sweep.member_command("experiments/lime_deep.py", member, "/tmp/w", python="python")
  assert cmd == [
    "python",
    "-m",
    "lime_jax.main",
    "--config=experiments/lime_deep.py:default,baseline",
    "--workdir=/tmp/w",
    "--config.seed=1",
    "--config.train.num_steps=10",
  ]


def test_summary_table_and_plot(tmp_path):
  member = sweep.Member("default,lime", 0, ())
  workdir = tmp_path / member.name
  workdir.mkdir()
  (workdir / "final_metrics.json").write_text(json.dumps({"status": "preempted", "train": {"loss": 0.5}}))
  assert not sweep.is_finished(str(workdir))  # an interrupted member is resumed, not skipped
  (workdir / "final_metrics.json").write_text(
    json.dumps(
      {
        "status": "completed",
        "train": {"loss": 0.5},
        "eval": {"ce": 0.7, "token_accuracy": 0.6, "exact_match": 0.3},
      }
    )
  )
  assert sweep.is_finished(str(workdir))
  (workdir / "compile_report.json").write_text(json.dumps({"params": 123, "memory/temp_size_mib": 4.0}))
  records = [
    {"step": 100, "split": "train", "loss": 0.9, "tokens_per_s": 1000.0},
    {"step": 200, "split": "train", "loss": 0.6, "tokens_per_s": 3000.0},
    {"step": 200, "split": "eval", "exact_match": 0.3},
  ]
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
  rows = [
    {
      "member": f"a_s{s}",
      "group": "a",
      "seed": s,
      "params": 10,
      "eval_exact_match": v,
      "eval_entropy": None,
      "spec": "a",
    }
    for s, v in ((0, 0.2), (1, 0.4), (2, 0.9))
  ]
  rows.append(
    {
      "member": "b_s0",
      "group": "b",
      "seed": 0,
      "params": 10,
      "eval_exact_match": 0.5,
      "eval_entropy": 2.0,
      "spec": "b",
    }
  )
  by_group = {r["group"]: r for r in sweep.aggregate_seeds(rows)}
  a = by_group["a"]
  assert a["seeds"] == "0 1 2" and a["params"] == 10 and "seed_mean" not in a
  assert abs(a["eval_exact_match_mean"] - 0.5) < 1e-12
  # sample std of (0.2, 0.4, 0.9): sqrt(((-0.3)^2 + (-0.1)^2 + 0.4^2) / 2) = sqrt(0.13)
  assert abs(a["eval_exact_match_std"] - 0.13**0.5) < 1e-12
  assert "eval_entropy_mean" not in a  # no seed of group a has it
  assert by_group["b"]["eval_exact_match_std"] == 0.0 and by_group["b"]["eval_entropy_mean"] == 2.0
  table = sweep.seed_table(sweep.aggregate_seeds(rows))
  assert "| a | 0 1 2 | 0.5 ± 0.36 |" in table


def _finished_member(directory, name, exact_match):
  """A member workdir holding only the result files a finished sweep member leaves."""
  workdir = directory / name
  workdir.mkdir(parents=True)
  (workdir / "final_metrics.json").write_text(
    json.dumps({"status": "completed", "train": {"loss": 1.0}, "eval": {"greedy_exact_match": exact_match}})
  )
  (workdir / "compile_report.json").write_text(json.dumps({"params": 10}))
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
  (workdir / "wall_time.json").write_text(json.dumps({"seconds": 120.0}))
  return workdir


def test_preset_value_comparison_parses_the_override():
  import ml_collections

  config = ml_collections.ConfigDict({"a": {"x": 0.004, "n": 2048, "s": "kv", "t": (1, 2)}})
  assert sweep.is_preset_value(config, "a.x=4e-3") and sweep.is_preset_value(config, "a.n=2048.0")
  assert sweep.is_preset_value(config, "a.s=kv") and sweep.is_preset_value(config, "a.t=(1,2)")
  assert not sweep.is_preset_value(config, "a.n=512") and not sweep.is_preset_value(config, "a.y=1")


def test_curve_table_pools_seeds_at_every_eval_step(tmp_path):
  members = [sweep.Member("a", seed, ()) for seed in (0, 1)] + [sweep.Member("b", 0, ())]
  evals = {"a_s0": {10: 0.2, 20: 0.6}, "a_s1": {10: 0.4, 20: 1.0}, "b_s0": {10: 0.5}}
  for name, points in evals.items():
    (tmp_path / name).mkdir()
    lines = [{"step": 10, "split": "train", "exact_match": 0.9}]
    lines += [{"step": s, "split": "eval", "exact_match": v} for s, v in points.items()]
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  table = sweep.curve_table(members, str(tmp_path)).splitlines()
  assert table[0] == "| exact_match at step | 10 | 20 |"
  assert table[2:5] == ["| a_s0 | 0.200 | 0.600 |", "| a_s1 | 0.400 | 1.000 |", "| b_s0 | 0.500 |  |"]
  # a: mean 0.3, sample std 0.141 at step 10; mean 0.8, std 0.283 at step 20
  assert table[5] == "| a (mean ± std (seeds)) | 0.300 ± 0.14 (2) | 0.800 ± 0.28 (2) |"
  assert table[6] == "| b (mean ± std (seeds)) | 0.500 ± 0.00 (1) |  |"


def test_tables_only_records_the_finished_members_it_names(tmp_path):
  """A finished member without member.json (run before members were recorded) is left out of the
  folder's tables until an invocation names it; --tables_only then records it, and only it."""
  root = tmp_path / "study"
  named, unnamed = sweep.Member("tiny,vanilla", 0, ()), sweep.Member("tiny,vanilla", 1, ())
  for member in (named, unnamed):
    _finished_member(root, member.name, 0.5)
  never_run = sweep.Member("tiny,vanilla", 2, ())  # named, but nothing to record
  assert sweep.record_finished(str(root), [named, never_run]) == [named]
  assert sweep.read_member(str(root / named.name)) == named
  assert sweep.read_member(str(root / unnamed.name)) is None
  assert not (root / never_run.name).exists()
  assert sweep.record_finished(str(root), [named]) == []  # already recorded


def test_ablation_points_use_the_varied_value_when_it_is_one_number():
  row = lambda vary: [{"vary": vary}]
  xs, labels, field = sweep.ablation_x([row("proj_dim=512"), row("proj_dim=4096")])
  assert (xs, labels, field) == ([512.0, 4096.0], ["512", "4096"], "proj_dim")
  xs, labels, field = sweep.ablation_x([row("lambda1=0.5 lambda2=0.002"), row("lambda1=0.1 lambda2=0.5")])
  assert (xs, labels, field) == ([0, 1], ["lambda1=0.5\nlambda2=0.002", "lambda1=0.1\nlambda2=0.5"], None)


def test_compare_rows_take_tokens_per_step_from_the_runs_config(tmp_path):
  """FLOPs per token divide by the run's own batch x seq_len (config.json: a fitted seq_len, --set
  overrides), not by the config file's preset values."""
  member = sweep.Member("default,lime", 0, ("train.batch_size=4",))
  workdir = _finished_member(tmp_path, member.name, 0.5)
  (workdir / "config.json").write_text(json.dumps({"train": {"batch_size": 4}, "data": {"seq_len": 20}}))
  (workdir / "compile_report.json").write_text(json.dumps({"params": 10, "flops_per_step_analytic": 8000.0}))
  row = compare.arm_row(member, str(workdir))
  assert row["arm"] == "lime" and row["flops_per_token"] == 8000.0 / (4 * 20)


def test_curve_styles_colour_per_group_and_line_style_per_seed():
  members = [sweep.Member(spec, seed, ()) for spec in ("a", "b") for seed in (0, 1, 2)]
  styles = sweep.curve_styles(members)
  colour = {m.name: styles[m.name]["color"] for m in members}
  assert colour["a_s0"] == colour["a_s1"] == colour["a_s2"] != colour["b_s0"] == colour["b_s2"]
  assert len({styles[f"a_s{s}"]["linestyle"] for s in range(3)}) == 3
  assert styles["a_s1"]["linestyle"] == styles["b_s1"]["linestyle"]
  assert [styles[m.name]["label"] for m in members] == ["a", None, None, "b", None, None]
  many = [sweep.Member(f"g{i}", 0, ()) for i in range(12)]  # more groups than tab10's colours
  assert len({str(v["color"]) for v in sweep.curve_styles(many).values()}) == 12


def test_member_name_and_command_with_variation():
  member = sweep.Member("default,seqvcr", 0, ("train.num_steps=5",), ("model.seq_vcr.proj_dim=512",))
  assert member.name == "default-seqvcr_num_steps=5_proj_dim=512_s0"
  assert sweep.member_command("e.py", member, "/w", python="p")[-2:] == [
    "--config.train.num_steps=5",
    "--config.model.seq_vcr.proj_dim=512",
  ]


def test_portable_path():
  here = os.getcwd()
  assert sweep.portable_path(os.path.join(here, "experiments", "x.py")) == os.path.join("experiments", "x.py")
  assert sweep.portable_path("/elsewhere/x.py") == "/elsewhere/x.py"
  assert sweep.portable_path("experiments/x.py") == "experiments/x.py"
