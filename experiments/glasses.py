"""Copying and counting (Glasses §3; docs/methods.md §5) as training tasks, to probe length generalisation.

  --config=experiments/glasses.py[:PRESET]

PRESET: copying (default; the four copying variants, lengths 1..16), counting (the four counting
tasks, lengths 1..16), tiny (seconds, tests). Train up to `data.<task>.max_length`, then probe beyond
it with `python -m lime_jax.evaluate --probes=copying,counting --lengths=4,8,16,32,64,128`.
"""

from lime_jax.config import default_config
from lime_jax.config.presets import apply_preset


def _common(c):
  c.model.update(num_layers=3, d_model=64, num_heads=4, ffn_dim=256)
  c.train.update(
    batch_size=32, num_steps=1200, learning_rate=3e-3, warmup_steps=100, log_every=100, checkpoint_every=600
  )
  c.eval.update(num_examples=256, batch_size=128)


def _copying(c):
  _common(c)
  c.data.update(task="copying", seq_len=66)  # the hint variant at 16 digits needs 66.
  c.data.copying.update(variant="mixed", min_length=1, max_length=16)


def _counting(c):
  _common(c)
  c.data.update(task="counting", seq_len=80)  # 'word' at 16 words needs 77 tokens.
  c.data.counting.update(variant="mixed", min_length=1, max_length=16)


def _tiny(c):
  _copying(c)
  c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.data.copying.max_length = 8
  c.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=2)
  c.eval.update(num_examples=16, batch_size=8)


PRESETS = {"default": _copying, "copying": _copying, "counting": _counting, "tiny": _tiny}


def get_config(preset: str | None = None):
  return apply_preset(default_config(), PRESETS, preset, "experiments/glasses.py")
