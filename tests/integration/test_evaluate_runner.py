"""The evaluation runner in process (`runner.evaluate`): incompatible probes fail (or are skipped on
request), finished probes are saved as they finish, saved results are reused only with the same options,
and random-init runs are compared."""

from __future__ import annotations

import json
import os

import pytest

from lime_jax.probes import registry, runner


def _arith_config():
  from lime_jax.experiments import baseline

  return baseline.get_config("tiny")  # task 'arithmetic': its tokenizer has no letters


def _fake_probes(monkeypatch, calls: list[str], skipped: str | None = None) -> None:
  """Two cheap probes (no model work) that record their calls; fake_b's result is `skipped` if given."""
  registry.known_probes()

  def make(name):
    def run(ctx):
      calls.append(f"{name}:{ctx.options.num_examples}")
      if name == "fake_b" and skipped:
        return {"metrics": {"skipped": skipped}, "notes": [skipped]}
      series = [{"label": l, "x": [1, 2], "y": [ctx.options.num_examples, 1.0]} for l in ("fp32", "bf16")]
      return {
        "metrics": {"n": ctx.options.num_examples},
        "summary": [["n", ctx.options.num_examples]],
        "plots": [{"name": f"{name}_plot", "series": series}],
      }

    return registry.Probe(name, run, "test probe")

  for name in ("fake_a", "fake_b"):
    monkeypatch.setitem(registry.REGISTRY, name, make(name))


def test_incompatible_probe_fails_naming_reason_and_runnable_probes(tmp_path):
  config = _arith_config()
  with pytest.raises(
    registry.IncompatibleProbeError,
    match=r"probe 'copying' cannot run on this checkpoint: the run's tokenizer \(task "
    r"'arithmetic'\) cannot encode.*Probes that can run on it.*entropy.*"
    r"--skip_incompatible",
  ):
    runner.evaluate(str(tmp_path / "r"), ["copying", "entropy"], random_init_config=config)
  assert not (tmp_path / "r" / "eval").exists()  # failed before any probe ran
  _, results = runner.evaluate(
    str(tmp_path / "r"), ["copying", "router"], random_init_config=config, skip_incompatible=True
  )
  assert "cannot encode" in results["probes"]["copying"]["metrics"]["skipped"]
  assert "not a LIMe checkpoint" in results["probes"]["router"]["metrics"]["skipped"]
  summary = (tmp_path / "r" / "eval" / "random_init" / "summary.md").read_text()
  assert "copying probe skipped" in summary


def test_skip_found_while_running_also_fails(tmp_path, monkeypatch):
  calls: list[str] = []
  _fake_probes(monkeypatch, calls, skipped="fake_b skipped: no such tokens")
  with pytest.raises(registry.IncompatibleProbeError, match="probe 'fake_b' cannot run.*no such tokens"):
    runner.evaluate(str(tmp_path / "r"), ["fake_b"], random_init_config=_arith_config())
  _, results = runner.evaluate(
    str(tmp_path / "r"), ["fake_b"], random_init_config=_arith_config(), skip_incompatible=True
  )
  assert results["probes"]["fake_b"]["metrics"]["skipped"] == "fake_b skipped: no such tokens"


def test_finished_probes_are_saved_when_a_later_one_fails(tmp_path, monkeypatch):
  """results.json is written as each probe finishes: a run that dies in its second probe keeps the first."""
  calls: list[str] = []
  _fake_probes(monkeypatch, calls)

  def crash(ctx):
    raise RuntimeError("killed mid-probe")

  monkeypatch.setitem(registry.REGISTRY, "fake_crash", registry.Probe("fake_crash", crash, "test probe"))
  with pytest.raises(RuntimeError, match="killed mid-probe"):
    runner.evaluate(str(tmp_path / "r"), ["fake_a", "fake_crash"], random_init_config=_arith_config())
  saved = json.loads((tmp_path / "r" / "eval" / "random_init" / "results.json").read_text())
  assert list(saved["probes"]) == ["fake_a"] and saved["probes"]["fake_a"]["metrics"] == {"n": 32}
  assert (tmp_path / "r" / "eval" / "random_init" / "fake_a_plot.png").exists()
  # --resume: the saved probe is not run again, the one that failed is
  calls.clear()
  _, results = runner.evaluate(
    str(tmp_path / "r"), ["fake_a", "fake_b"], random_init_config=_arith_config(), reuse=True
  )
  assert calls == ["fake_b:32"] and set(results["probes"]) == {"fake_a", "fake_b"}


def test_saved_results_are_reused_only_with_the_same_options(tmp_path, monkeypatch):
  calls: list[str] = []
  _fake_probes(monkeypatch, calls)
  config, workdir = _arith_config(), str(tmp_path / "r")
  a, b = registry.ProbeOptions(num_examples=8), registry.ProbeOptions(num_examples=4)
  runner.evaluate(workdir, ["fake_a", "fake_b"], a, random_init_config=config, reuse=True)
  assert calls == ["fake_a:8", "fake_b:8"]
  _, results = runner.evaluate(workdir, ["fake_a"], a, random_init_config=config, reuse=True)
  assert calls == ["fake_a:8", "fake_b:8"]  # same step, config and options: reused, not run again
  assert results["probes"]["fake_a"]["metrics"] == {"n": 8} and set(results["probes"]) == {"fake_a", "fake_b"}
  _, results = runner.evaluate(workdir, ["fake_a"], b, random_init_config=config, reuse=True)
  assert calls[-1] == "fake_a:4"  # other options: recomputed
  assert set(results["probes"]) == {"fake_a"}  # fake_b, computed with other options, is not merged in
  assert results["probes"]["fake_a"]["options"]["num_examples"] == 4
  eval_dir = os.path.join(workdir, "eval", "random_init")
  (replaced,) = [f for f in os.listdir(eval_dir) if f.startswith("results.") and f != "results.json"]
  kept = json.load(open(os.path.join(eval_dir, replaced), encoding="utf-8"))  # nothing computed is lost
  assert kept["probes"]["fake_b"]["metrics"] == {"n": 8}
  path = os.path.join(eval_dir, "results.json")
  saved = json.load(open(path, encoding="utf-8"))
  saved["probes"]["fake_a"]["options"]["a_field_since_removed"] = 3
  json.dump(saved, open(path, "w", encoding="utf-8"))
  runner.evaluate(workdir, ["fake_a"], b, random_init_config=config, reuse=True)
  assert calls[-1] == "fake_a:4" and len(calls) == 3  # an option field no longer in ProbeOptions: reused
  config.seed = 7  # another random model: nothing saved applies
  runner.evaluate(workdir, ["fake_a"], b, random_init_config=config, reuse=True)
  assert calls[-1] == "fake_a:4" and len(calls) == 4
  saved = json.load(open(path, encoding="utf-8"))
  for result in saved["probes"].values():  # a results.json of older code: no options per result
    result.pop("options")
  json.dump(saved, open(path, "w", encoding="utf-8"))
  runner.evaluate(workdir, ["fake_a"], b, random_init_config=config, reuse=True)
  assert len(calls) == 5


def test_compare_uses_only_the_requested_probes(tmp_path, monkeypatch):
  calls: list[str] = []
  _fake_probes(monkeypatch, calls)
  config, opts = _arith_config(), registry.ProbeOptions(num_examples=8)
  runs = {}
  for name in ("base", "lime"):
    runner.evaluate(str(tmp_path / name), ["fake_b"], opts, random_init_config=config)
    runs[name] = runner.evaluate(str(tmp_path / name), ["fake_a"], opts, random_init_config=config)[1]
    assert set(runs[name]["probes"]) == {"fake_a", "fake_b"}
  runner.compare(runs, str(tmp_path / "cmp"), ["fake_a"])
  table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
  assert set(table["base"]["summary"]) == {"fake_a"} and set(table["lime"]["summary"]) == {"fake_a"}
  assert (tmp_path / "cmp" / "fake_a_plot.png").exists()
  assert not (tmp_path / "cmp" / "fake_b_plot.png").exists()


def test_random_init_and_compare(tmp_path):
  from lime_jax.experiments import baseline

  config = baseline.get_config("tiny")
  opts = registry.ProbeOptions(num_examples=8)
  runs = {}
  for seed in (0, 1):
    config.seed = seed
    out, results = runner.evaluate(
      str(tmp_path / f"r{seed}"),
      ["entropy", "router"],
      opts,
      random_init_config=config,
      skip_incompatible=True,
    )
    assert out.endswith(os.path.join("eval", "random_init")) and results["step"] == "random_init"
    runs[f"seed{seed}"] = results
  _, again = runner.evaluate(
    str(tmp_path / "r1"), ["router"], opts, random_init_config=config, skip_incompatible=True
  )
  assert set(again["probes"]) == {"entropy", "router"}  # earlier probes of the same step are kept
  assert again["probes"]["entropy"] == runs["seed1"]["probes"]["entropy"]
  ranks = [r["probes"]["entropy"]["metrics"]["hidden"]["effective_rank"] for r in runs.values()]
  assert ranks[0] != ranks[1]  # two different random models
  written = runner.compare(runs, str(tmp_path / "cmp"))
  assert any(p.endswith("entropy_hidden.png") for p in written)
  table = (tmp_path / "cmp" / "compare.md").read_text()
  assert "| quantity | seed0 | seed1 |" in table and "router probe skipped" not in table
