"""Compact figures for docs/results.md from the probe demo's results.json files.

  python benchmarks/probe_demo_figures.py --trained=workdirs/glasses_copying/eval/1200 \
      --random=workdirs/glasses_random/eval/random_init --copying=workdirs/glasses_copying/eval/1200 \
      --counting=workdirs/glasses_counting/eval/800 --out=docs/img
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FAMILIES = ("repeated_ones", "uniform_digits", "ones_commas")


def _load(path: str) -> dict:
  with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def collapse_grid(trained: dict, random: dict, out: str) -> str:
  fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True, sharey=True)
  for row, (label, res) in enumerate((("trained", trained), ("random init", random))):
    m = res["probes"]["collapse"]["metrics"]
    for col, fam in enumerate(FAMILIES):
      ax = axes[row, col]
      for dtype, color in (("float32", "C0"), ("bfloat16", "C3")):
        rows = m["families"][f"{dtype}/{fam}"]
        for reading, style in (("heads_linf", "-"), ("chunks_linf", "--")):
          y = np.array([r["mean"] for r in rows[reading]])
          y = np.where(y > 0, y, 1e-9)  # exactly 0 (bf16 collapse) drawn at 1e-9
          ax.plot(
            m["ns"],
            y,
            style,
            marker=".",
            color=color,
            label=f"{'fp32' if dtype == 'float32' else 'bf16'} {reading.split('_')[0]}",
          )
      ax.axhline(m["bf16_resolution"], color="k", ls=":", lw=0.8, label="2^-7")
      ax.set(xscale="log", yscale="log", title=f"{label}: {fam}")
      ax.grid(alpha=0.3)
      if row == 1:
        ax.set_xlabel("n")
      if col == 0:
        ax.set_ylabel("L-inf, mean over heads")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out, "probe_collapse_trained_vs_random.png")
  fig.savefig(path, dpi=70)
  plt.close(fig)
  return path


def length_generalisation(copying: dict, counting: dict, out: str) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  c = copying["probes"]["copying"]["metrics"]
  for variant, acc in c["accuracy"].items():
    axes[0].plot(c["lengths"], acc, marker=".", label=variant)
  axes[0].axvline(c["train_max_length"], color="grey", ls="--", lw=0.8, label="train max length")
  axes[0].set(
    xscale="log", ylim=(-0.02, 1.02), xlabel="length n", ylabel="greedy accuracy", title="copying model"
  )
  k = counting["probes"]["counting"]["metrics"]
  for variant, err in k["abs_error"].items():
    axes[1].plot(k["lengths"], err, marker=".", label=variant)
  axes[1].axvline(k["train_max_length"], color="grey", ls="--", lw=0.8, label="train max length")
  axes[1].set(
    xscale="log", yscale="symlog", xlabel="length n", ylabel="mean |predicted - true|", title="counting model"
  )
  axes[1].set_ylim(bottom=0)
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out, "probe_copying_counting_vs_length.png")
  fig.savefig(path, dpi=70)
  plt.close(fig)
  return path


def main() -> None:
  parser = argparse.ArgumentParser()
  for name in ("trained", "random", "copying", "counting", "out"):
    parser.add_argument(f"--{name}", required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  print(collapse_grid(_load(args.trained), _load(args.random), args.out))
  print(length_generalisation(_load(args.copying), _load(args.counting), args.out))


if __name__ == "__main__":
  main()
