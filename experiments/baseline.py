"""The LLaMA baseline (docs/methods.md §1).

Presets:
  default  arithmetic (2 operators, mod 5, chain of thought) on 2 CPU cores in ~3 minutes (4 layers x 128).
  tiny     seconds-long smoke run (tests).
  paper    docs/methods.md §1 main config (1.2B, 16 x 2048), GPT-2 BPE, FineWeb-Edu-style parquet shards, seq
  2048:
           set data.tokenizer, data.text.files and data.text.eval_files (presets.paper_text_data).
"""

from lime_jax.config import default_config
from lime_jax.config.presets import apply_preset, paper_main_model, paper_text_data


def _default(c):
  # CPU sizing: 2 operators mod 5 with chain-of-thought answers is learnt by a 4-layer model in ~3 minutes
  # (80% held-out exact match; direct answers, or mod 11, stay near chance at this budget).
  # --config.data.arithmetic.modulus=11 --config.data.arithmetic.num_operators=4 is the paper's task.
  c.model.update(num_layers=4, d_model=128, num_heads=4, ffn_dim=512)
  c.data.update(task="arithmetic", seq_len=16)
  c.data.arithmetic.update(num_operators=2, cot=True, modulus=5, test_fraction=0.1)
  c.train.update(
    batch_size=64,
    num_steps=1000,
    learning_rate=3e-3,
    warmup_steps=100,
    weight_decay=0.1,
    log_every=100,
    checkpoint_every=500,
    eval_every=500,
  )
  c.eval.num_examples = 1024


def _tiny(c):
  _default(c)
  c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.train.update(batch_size=8, num_steps=6, warmup_steps=2, log_every=2, checkpoint_every=3)
  c.eval.update(num_examples=16, batch_size=8)


def _paper(c):
  paper_main_model(c)
  paper_text_data(c)  # the user supplies data.tokenizer, data.text.files / eval_files.


PRESETS = {"default": _default, "tiny": _tiny, "paper": _paper}


def get_config(preset: str | None = None):
  return apply_preset(default_config(), PRESETS, preset, "experiments/baseline.py")
