"""Preset selection for experiment configs: `--config=experiments/x.py:preset`."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

Preset = Callable[[ml_collections.ConfigDict], None]


def apply_preset(
  config: ml_collections.ConfigDict, presets: dict[str, Preset], name: str | None, config_file: str
) -> ml_collections.ConfigDict:
  """Applies `presets[name]` (default: 'default') to `config`, or names the known presets."""
  name = name or "default"
  if name not in presets:
    raise ValueError(
      f"Unknown preset {name!r} for {config_file}; known presets: {', '.join(sorted(presets))}. "
      f"Use --config={config_file}:<preset>."
    )
  presets[name](config)
  return config


def paper_main_model(c: ml_collections.ConfigDict) -> None:
  """docs/methods.md §1 main config: 16 x 2048, FFN 8192, 32 heads, GPT-2 vocab, tied, seq 2048, bf16."""
  c.model.update(
    num_layers=16,
    d_model=2048,
    ffn_dim=8192,
    num_heads=32,
    num_kv_heads=32,
    vocab_size=50_257,
    tie_embeddings=True,
    compute_dtype="bfloat16",
    remat_policy="full",
  )
  c.data.seq_len = 2048
  c.train.update(
    batch_size=1024,
    num_steps=20_000,
    learning_rate=1e-3,
    warmup_steps=200,
    weight_decay=0.1,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    grad_clip=1.0,
    min_lr_ratio=0.0,
    checkpoint_every=1000,
    log_every=50,
  )


def paper_deep_model(c: ml_collections.ConfigDict, num_layers: int) -> None:
  """docs/methods.md §1 deep config: d_model 256, FFN 1024, 8 heads, 32/64/128 layers, 5k steps."""
  paper_main_model(c)
  c.model.update(num_layers=num_layers, d_model=256, ffn_dim=1024, num_heads=8, num_kv_heads=8)
  c.train.num_steps = 5000


def deep_narrow_cpu(c: ml_collections.ConfigDict) -> None:
  """Deep and narrow on the baseline's CPU task (2 operators mod 5, chain of thought): 16 x 64 has the
  parameters of baseline.py's 4 x 128 default, so it trains in a few minutes on 2 cores."""
  c.model.update(num_layers=16, d_model=64, num_heads=4, ffn_dim=256)
  c.data.update(task="arithmetic", seq_len=16)
  c.data.arithmetic.update(num_operators=2, cot=True, modulus=5, test_fraction=0.1)
  c.train.update(
    batch_size=64,
    num_steps=1000,
    learning_rate=3e-3,
    warmup_steps=100,
    log_every=100,
    checkpoint_every=500,
    eval_every=500,
  )
  c.eval.num_examples = 1024


def deep_narrow_tiny(c: ml_collections.ConfigDict) -> None:
  """`deep_narrow_cpu` shrunk to seconds (tests): 4 x 32, 4 steps."""
  deep_narrow_cpu(c)
  c.model.update(num_layers=4, d_model=32, num_heads=2, ffn_dim=64)
  c.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=2)
  c.eval.update(num_examples=16, batch_size=8)


def paper_text_data(c: ml_collections.ConfigDict) -> None:
  """The paper's data setting (docs/methods.md §1): FineWeb-Edu parquet shards, GPT-2 BPE, seq 2048, loss on
  every
  token. The user supplies the files (validation names each missing field before anything is built):
    --config.data.tokenizer=PATH       GPT-2's tokenizer.json (or the folder of an HF `gpt2` snapshot)
    --config.data.text.files=GLOB      train shards, e.g. 'fineweb-edu/sample/10BT/*.parquet' (gs:// too)
    --config.data.text.eval_files=GLOB held-out shards (not among the train files)
  """
  c.data.update(task="text", loss_scope="all", seq_len=2048, tokenizer="")
  c.data.text.update(source="files", file_format="parquet", feature="text", files="", eval_files="")


def paper_deep_text(num_layers: int) -> Preset:
  """A preset: `paper_deep_model` with `num_layers` on the paper's text data (`paper_text_data`)."""

  def preset(c: ml_collections.ConfigDict) -> None:
    paper_deep_model(c, num_layers)
    paper_text_data(c)

  return preset
