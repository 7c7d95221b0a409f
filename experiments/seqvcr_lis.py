"""Seq-VCR and pause tokens on the longest increasing subsequence (docs/methods.md §4, §5; Feng et al. task).

  --config=experiments/seqvcr_lis.py[:PRESET[,ARM]]

PRESET: default (CPU: length 10, 4 x 128 model), tiny (seconds, tests), len50 / len80 / len100 (paper:
minGPT-sized model from scratch, 6 layers x 256, 4 heads; AdamW lr 1e-4, batch 128, 100 epochs of 1M).
ARM: vanilla, pause (4 pauses, the paper's setting for length 80; 2 on CPU), seqvcr, seqvcr_pause
(default), cot — see experiments/seqvcr_arms.py. Seq-VCR (App. A): lambda1 = 0.1, lambda2 = 0.5, projection
2048 on the final block. Sweeps: `python -m lime_jax.tools.sweep --config=experiments/seqvcr_lis.py
--specs=len80,seqvcr_pause --sweep=lambdas|proj_dim --workdir=... [--dry_run]`.
"""

from lime_jax.config.presets import Preset
from lime_jax.experiments import seqvcr_arms
from lime_jax.experiments.seqvcr_arms import SWEEPS  # noqa: F401  (read by lime_jax.tools.sweep --sweep=)

CONFIG_FILE = "experiments/seqvcr_lis.py"
LAMBDAS = {"lambda1": 0.1, "lambda2": 0.5}  # Seq-VCR coefficients (App. A)
_DEFAULT = seqvcr_arms.cpu_preset(
  "lis",
  {"length": 10, "test_fraction": 0.01},
  LAMBDAS,
  batch_size=64,
  num_steps=1000,
  learning_rate=2e-3,
  checkpoint_every=500,
  eval_every=500,
)


def _paper(length: int) -> Preset:
  return seqvcr_arms.feng_paper_preset("lis", {"length": length, "test_fraction": 0.01}, LAMBDAS)


PRESETS = {
  "default": _DEFAULT,
  "tiny": seqvcr_arms.tiny_preset(_DEFAULT, length=5),
  "len50": _paper(50),
  "len80": _paper(80),
  "len100": _paper(100),
}
NUM_PAUSE = {"len50": 4, "len80": 4, "len100": 4}  # others: 2


def get_config(spec: str | None = None):
  return seqvcr_arms.get_config(spec, PRESETS, CONFIG_FILE, NUM_PAUSE)
