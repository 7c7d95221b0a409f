"""Seq-VCR and pause tokens on the longest increasing subsequence (SPEC §4, §5; Feng et al. task).

  --config=experiments/seqvcr_lis.py[:PRESET[,ARM]]

PRESET: default (CPU: length 10, 4 x 128 model), tiny (seconds, tests), len50 / len80 / len100 (paper:
minGPT-sized model from scratch, 6 layers x 256, 4 heads; AdamW lr 1e-4, batch 128, 100 epochs of 1M).
ARM: vanilla, pause (4 pauses, the paper's setting for length 80; 2 on CPU), seqvcr, seqvcr_pause
(default), cot — see lime_jax/seqvcr_arms.py. Seq-VCR (App. A): lambda1 = 0.1, lambda2 = 0.5, projection
2048 on the final block. Sweeps: `python -m lime_jax.sweep --config=experiments/seqvcr_lis.py
--specs=len80,seqvcr_pause --sweep=lambdas|proj_dim --root=... [--dry_run]`.
"""

from lime_jax import seqvcr_arms
from lime_jax.seqvcr_arms import SWEEPS  # noqa: F401  (read by lime_jax.sweep --sweep=)

CONFIG_FILE = "experiments/seqvcr_lis.py"


def _seq_vcr(c):
  c.model.seq_vcr.update(lambda1=0.1, lambda2=0.5, eta=1e-3, proj_dim=2048, layers=(-1,),
                         variant="per_position", positions="aligned")


def _default(c):
  c.model.update(num_layers=4, d_model=128, num_heads=4, ffn_dim=512)
  c.data.task = "lis"
  c.data.lis.update(length=10, test_fraction=0.01)
  _seq_vcr(c)
  c.train.update(batch_size=64, num_steps=1000, learning_rate=2e-3, warmup_steps=100, weight_decay=0.1,
                 log_every=100, checkpoint_every=500, eval_every=500)
  c.eval.update(num_examples=512, batch_size=128)


def _tiny(c):
  _default(c)
  c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.model.seq_vcr.proj_dim = 64
  c.data.lis.length = 5
  c.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=2, eval_every=2)
  c.eval.update(num_examples=16, batch_size=8)


def _paper(length):
  def preset(c):
    c.model.update(num_layers=6, d_model=256, num_heads=4, ffn_dim=1024)
    c.data.task = "lis"
    c.data.lis.update(length=length, test_fraction=0.01)
    _seq_vcr(c)
    c.train.update(batch_size=128, num_steps=100 * 1_000_000 // 128, learning_rate=1e-4,
                   warmup_steps=1000, weight_decay=0.01, log_every=500, checkpoint_every=10_000,
                   eval_every=50_000)
    c.eval.update(num_examples=10_000, batch_size=500)
  return preset


PRESETS = {"default": _default, "tiny": _tiny, "len50": _paper(50), "len80": _paper(80),
           "len100": _paper(100)}
NUM_PAUSE = {"len50": 4, "len80": 4, "len100": 4}  # others: 2


def get_config(spec: str | None = None):
  return seqvcr_arms.get_config(spec, PRESETS, CONFIG_FILE, NUM_PAUSE)
