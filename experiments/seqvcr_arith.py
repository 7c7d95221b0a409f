"""Seq-VCR and pause tokens on arithmetic expressions mod 11 (docs/methods.md §4, §5; Feng et al. task).

  --config=experiments/seqvcr_arith.py[:PRESET[,ARM]]

PRESET: default (CPU: 2 operators mod 5, 4 x 128 model), tiny (seconds, tests), ops4 / ops5 / ops6 (paper:
4/5/6 operators mod 11; minGPT-sized model from scratch: 6 layers x 256, 4 heads; AdamW lr 1e-4, batch
128, 100 epochs of 1M examples; the paper also uses dropout 0.1, which this model does not have).
ARM: vanilla, pause (7 pauses, the paper's best for 5 operators; 2 on CPU), seqvcr, seqvcr_pause
(default), cot — see experiments/seqvcr_arms.py. Seq-VCR (App. A): lambda1 = 0.1, lambda2 = 0.5, projection
2048 on the final block. Sweeps: `python -m lime_jax.tools.sweep --config=experiments/seqvcr_arith.py
--specs=ops5,seqvcr_pause --sweep=lambdas|proj_dim --workdir=... [--dry_run]`.
"""

from lime_jax.config.presets import Preset
from lime_jax.experiments import seqvcr_arms
from lime_jax.experiments.seqvcr_arms import SWEEPS  # noqa: F401  (read by lime_jax.tools.sweep --sweep=)

CONFIG_FILE = "experiments/seqvcr_arith.py"
LAMBDAS = {"lambda1": 0.1, "lambda2": 0.5}  # Seq-VCR coefficients (App. A)
_DEFAULT = seqvcr_arms.cpu_preset(
  "arithmetic",
  {"num_operators": 2, "modulus": 5, "test_fraction": 0.1},
  LAMBDAS,
  batch_size=64,
  num_steps=1000,
  learning_rate=3e-3,
  checkpoint_every=500,
  eval_every=500,
)


def _paper(num_operators: int) -> Preset:
  fields = {"num_operators": num_operators, "modulus": 11, "test_fraction": 0.01}
  return seqvcr_arms.feng_paper_preset("arithmetic", fields, LAMBDAS)


def _cpu(num_operators: int, num_steps: int) -> Preset:
  """The CPU study's regime (docs/results.md, issue 20): `num_operators` mod 11, the 4 x 128 model."""
  fields = {"num_operators": num_operators, "modulus": 11, "test_fraction": 0.01}
  return seqvcr_arms.cpu_preset(
    "arithmetic",
    fields,
    LAMBDAS,
    batch_size=64,
    num_steps=num_steps,
    learning_rate=1e-3,
    checkpoint_every=1000,
    eval_every=1000,
  )


PRESETS = {
  "default": _DEFAULT,
  "tiny": seqvcr_arms.tiny_preset(_DEFAULT),
  "ops4": _paper(4),
  "ops5": _paper(5),
  "ops6": _paper(6),
  "cpu_ops2": _cpu(2, 3000),
  "cpu_ops3": _cpu(3, 3000),
  "cpu_ops4": _cpu(4, 3000),
}
NUM_PAUSE = {"ops4": 7, "ops5": 7, "ops6": 7}  # others: 2


def get_config(spec: str | None = None):
  return seqvcr_arms.get_config(spec, PRESETS, CONFIG_FILE, NUM_PAUSE)
