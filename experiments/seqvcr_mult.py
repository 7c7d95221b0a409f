"""Seq-VCR and pause tokens on n x n multiplication (docs/methods.md §4, §5; Deng et al. format).

  --config=experiments/seqvcr_mult.py[:PRESET[,ARM]]

PRESET: default (CPU: 3 x 3 digits, 4 x 128 model, ~10 minutes per arm on 2 cores), tiny (seconds, tests),
4x4 / 5x5 (paper-ish: GPT-2-small-shaped model (12 x 768, 12 heads) trained from scratch, batch 32,
lr 5e-4, 40 epochs of 808k examples; evaluated on the official test files), gpt2_table1 / gpt2_table1_5x5
(the paper's Table 1 protocol: the same schedule fine-tuning a pretrained GPT-2 small; needs
`--config.model.init_from=hf:/path/to/gpt2`, whose tokenizer then encodes the task).
ARM: vanilla, pause (2 pauses), seqvcr, seqvcr_pause (default), cot — see experiments/seqvcr_arms.py.
Seq-VCR coefficients (App. A): lambda1 = 1.0, lambda2 = 0.004, projection 2048, final block.
Sweeps (docs/methods.md §4 ablations): `python -m lime_jax.tools.sweep --config=experiments/seqvcr_mult.py
  --specs=default,seqvcr_pause --sweep=lambdas|proj_dim --workdir=workdirs/mult_lambdas [--dry_run]`.
"""

from lime_jax.config.presets import Preset
from lime_jax.data import multiplication
from lime_jax.experiments import seqvcr_arms
from lime_jax.experiments.seqvcr_arms import SWEEPS  # noqa: F401  (read by lime_jax.tools.sweep --sweep=)
from lime_jax.train import init_from

CONFIG_FILE = "experiments/seqvcr_mult.py"
LAMBDAS = {"lambda1": 1.0, "lambda2": 0.004}  # Seq-VCR coefficients (App. A)
_DEFAULT = seqvcr_arms.cpu_preset(
  "multiplication",
  {"num_digits": 3, "test_fraction": 0.01},
  LAMBDAS,
  batch_size=32,
  num_steps=1200,
  learning_rate=2e-3,
  checkpoint_every=400,
  eval_every=400,
)


def _paper(n: int) -> Preset:
  def preset(c):
    c.model.update(num_layers=12, d_model=768, num_heads=12, ffn_dim=3072, tie_embeddings=True)
    seqvcr_arms.set_task(c, "multiplication", num_digits=n, eval_file=multiplication.OFFICIAL)
    seqvcr_arms.set_seq_vcr(c, **LAMBDAS)
    c.train.update(
      batch_size=32,
      num_steps=40 * 808_000 // 32,
      learning_rate=5e-4,
      warmup_steps=1000,
      weight_decay=0.01,
      log_every=500,
      checkpoint_every=10_000,
      eval_every=20_000,
    )
    c.eval.update(num_examples=1000, batch_size=200)

  return preset


def _gpt2_table1(n: int) -> Preset:
  """Seq-VCR Table 1: GPT-2 small fine-tuned on n x n multiplication (batch 32, lr 5e-4, 40 epochs).
  The architecture comes from `--config.model.init_from=hf:/path/to/gpt2` (required; checked before
  anything is built) and the task is encoded with that folder's tokenizer (data.tokenizer)."""

  def preset(c):
    _paper(n)(c)
    c.model.update(num_layers=4, d_model=256, num_heads=8, ffn_dim=1024)  # the defaults: from the source
    c.model.init_from = init_from.REQUIRED

  return preset


_CPU_2X2 = seqvcr_arms.cpu_preset(
  "multiplication",
  {"num_digits": 2, "test_fraction": 0.05},
  LAMBDAS,
  batch_size=64,
  num_steps=4000,
  learning_rate=2e-3,
  checkpoint_every=1000,
  eval_every=1000,
)  # the CPU study's pilot (docs/results.md, issue 20)

PRESETS = {
  "default": _DEFAULT,
  "cpu_2x2": _CPU_2X2,
  "tiny": seqvcr_arms.tiny_preset(_DEFAULT, num_digits=2),
  "4x4": _paper(4),
  "5x5": _paper(5),
  "gpt2_table1": _gpt2_table1(4),
  "gpt2_table1_5x5": _gpt2_table1(5),
}
NUM_PAUSE = {}  # 2 pauses for every preset (the paper's multiplication setting).


def get_config(spec: str | None = None):
  return seqvcr_arms.get_config(spec, PRESETS, CONFIG_FILE, NUM_PAUSE)
