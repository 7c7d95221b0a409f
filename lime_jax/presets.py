"""Preset selection for experiment configs: `--config=experiments/x.py:preset`."""

from __future__ import annotations

from typing import Callable

import ml_collections

Preset = Callable[[ml_collections.ConfigDict], None]


def apply_preset(config: ml_collections.ConfigDict, presets: dict[str, Preset], name: str | None,
                 config_file: str) -> ml_collections.ConfigDict:
  """Applies `presets[name]` (default: 'default') to `config`, or names the known presets."""
  name = name or "default"
  if name not in presets:
    raise ValueError(f"Unknown preset {name!r} for {config_file}; known presets: {', '.join(sorted(presets))}. "
                     f"Use --config={config_file}:<preset>.")
  presets[name](config)
  return config


def paper_main_model(c: ml_collections.ConfigDict) -> None:
  """SPEC §1 main config: 16 x 2048, FFN 8192, 32 heads, GPT-2 vocab, tied, seq 2048, bf16."""
  c.model.update(num_layers=16, d_model=2048, ffn_dim=8192, num_heads=32, num_kv_heads=32,
                 vocab_size=50_257, tie_embeddings=True, compute_dtype="bfloat16", remat_policy="full")
  c.data.seq_len = 2048
  c.train.update(batch_size=1024, num_steps=20_000, learning_rate=1e-3, warmup_steps=200,
                 weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0, min_lr_ratio=0.0,
                 checkpoint_every=1000, log_every=50)


def paper_deep_model(c: ml_collections.ConfigDict, num_layers: int) -> None:
  """SPEC §1 deep config: d_model 256, FFN 1024, 8 heads, 32/64/128 layers, 5k steps."""
  paper_main_model(c)
  c.model.update(num_layers=num_layers, d_model=256, ffn_dim=1024, num_heads=8, num_kv_heads=8)
  c.train.num_steps = 5000
