"""The five arms of the Seq-VCR comparison (docs/methods.md §4.2) and its ablation sweeps, shared by
experiments/seqvcr_{mult,arith,lis}.py.

Arms (`--config=experiments/seqvcr_mult.py:PRESET,ARM`):
  vanilla       direct answer, no pauses, no Seq-VCR;
  pause         K pause tokens between question and answer (`data.num_pause`);
  seqvcr        Seq-VCR on the final block (projection `model.seq_vcr.proj_dim`);
  seqvcr_pause  both;
  cot           chain-of-thought answers (no pauses, no Seq-VCR).
`data.seq_len` is 0: fitted to the task's longest example under the arm (pauses and CoT lengthen it)
when the run is built, so `--config.data.<task>.<field>=...` (more digits, another length) refits it.

Pause tokens share ONE learned embedding: every pause is the same token id (tokenizer PAUSE_ID), so
its row of the embedding table is the shared pause embedding; </pause_start> and </pause_end> have
their own rows. The pipeline puts no CE on question or pause positions (data.loss_scope='answer').

Sweeps (`python -m lime_jax.tools.sweep --config=experiments/seqvcr_mult.py --specs=default,seqvcr_pause
--sweep=lambdas`): SWEEPS maps a name to the per-member override lists.
"""

from __future__ import annotations

import ml_collections

from lime_jax.config.presets import Preset

ARMS = ("vanilla", "pause", "seqvcr", "seqvcr_pause", "cot")

# docs/methods.md §4 ablation plan.
LAMBDA_PAIRS = ((0.5, 0.002), (1.0, 0.004), (2.0, 0.008), (0.05, 0.25), (0.1, 0.5), (0.2, 1.0))
PROJ_DIMS = (512, 1024, 2048, 4096)
SWEEPS: dict[str, tuple[tuple[str, ...], ...]] = {
  "lambdas": tuple((f"model.seq_vcr.lambda1={l1}", f"model.seq_vcr.lambda2={l2}") for l1, l2 in LAMBDA_PAIRS),
  "proj_dim": tuple((f"model.seq_vcr.proj_dim={p}",) for p in PROJ_DIMS),
}


def set_seq_vcr(c: ml_collections.ConfigDict, lambda1: float, lambda2: float) -> None:
  """The paper's Seq-VCR (App. A): per-position on the final block, projection 2048, eta 1e-3."""
  c.model.seq_vcr.update(
    lambda1=lambda1,
    lambda2=lambda2,
    eta=1e-3,
    proj_dim=2048,
    layers=(-1,),
    variant="per_position",
    positions="aligned",
  )


def set_task(c: ml_collections.ConfigDict, task: str, **fields) -> None:
  """Selects `data.task` and overrides `fields` of its sub-config."""
  c.data.task = task
  c.data[task].update(**fields)


def cpu_preset(task: str, task_fields: dict, lambdas: dict[str, float], **train) -> Preset:
  """The CPU `default` of a Seq-VCR experiment: `task` with `task_fields`, 4 x 128 model, Seq-VCR with
  `lambdas`, `train` overrides (batch, steps, lr, checkpoint/eval cadence) on top of warmup 100,
  weight decay 0.1, log every 100."""

  def preset(c: ml_collections.ConfigDict) -> None:
    c.model.update(num_layers=4, d_model=128, num_heads=4, ffn_dim=512)
    set_task(c, task, **task_fields)
    set_seq_vcr(c, **lambdas)
    c.train.update(warmup_steps=100, weight_decay=0.1, log_every=100, **train)
    c.eval.update(num_examples=512, batch_size=128)

  return preset


def tiny_preset(default: Preset, **task_fields) -> Preset:
  """The `tiny` preset (seconds, tests): `default` with a 2 x 32 model, projection 64 and 4 steps;
  `task_fields` override the task's sub-config (e.g. a shorter length)."""

  def preset(c: ml_collections.ConfigDict) -> None:
    default(c)
    c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
    c.model.seq_vcr.proj_dim = 64
    c.data[c.data.task].update(**task_fields)
    c.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=2, eval_every=2)
    c.eval.update(num_examples=16, batch_size=8)

  return preset


def feng_paper_preset(task: str, task_fields: dict, lambdas: dict[str, float]) -> Preset:
  """The paper's setting for the Feng et al. tasks (arithmetic, LIS): `task` with `task_fields`,
  minGPT-sized model from scratch (6 x 256, 4 heads), AdamW lr 1e-4, batch 128, 100 epochs of 1M
  examples, Seq-VCR with `lambdas`."""

  def preset(c: ml_collections.ConfigDict) -> None:
    c.model.update(num_layers=6, d_model=256, num_heads=4, ffn_dim=1024)
    set_task(c, task, **task_fields)
    set_seq_vcr(c, **lambdas)
    c.train.update(
      batch_size=128,
      num_steps=100 * 1_000_000 // 128,
      learning_rate=1e-4,
      warmup_steps=1000,
      weight_decay=0.01,
      log_every=500,
      checkpoint_every=10_000,
      eval_every=50_000,
    )
    c.eval.update(num_examples=10_000, batch_size=500)

  return preset


def task_cot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The task sub-config holding the `cot` switch."""
  return c.data[c.data.task]


def apply_arm(c: ml_collections.ConfigDict, arm: str, num_pause: int, config_file: str) -> None:
  """Sets pauses / Seq-VCR / CoT for `arm` (Seq-VCR coefficients come from the preset)."""
  if arm not in ARMS:
    raise ValueError(
      f"Unknown arm {arm!r} for {config_file}; use one of {', '.join(ARMS)}, e.g. "
      f"--config={config_file}:default,seqvcr_pause."
    )
  c.data.num_pause = num_pause if arm in ("pause", "seqvcr_pause") else 0
  c.model.seq_vcr.enabled = arm in ("seqvcr", "seqvcr_pause")
  task_cot(c).cot = arm == "cot"
  c.eval.greedy = True
  c.data.seq_len = 0  # fitted to the task when the run's config is resolved (pipeline.resolve)


def get_config(
  spec: str | None, presets: dict, config_file: str, num_pause: dict[str, int]
) -> ml_collections.ConfigDict:
  """`PRESET[,ARM]` -> config (arm default: seqvcr_pause). `num_pause[preset]` is K for the pause arms."""
  from lime_jax.config import default_config
  from lime_jax.config.presets import apply_preset

  preset, _, arm = (spec or "default").partition(",")
  preset = preset or "default"
  config = apply_preset(default_config(), presets, preset, config_file)
  apply_arm(config, arm or "seqvcr_pause", num_pause.get(preset, 2), config_file)
  return config
