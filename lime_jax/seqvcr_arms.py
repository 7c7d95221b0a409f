"""The five arms of the Seq-VCR comparison (SPEC §4.2) and its ablation sweeps, shared by
experiments/seqvcr_{mult,arith,lis}.py.

Arms (`--config=experiments/seqvcr_mult.py:PRESET,ARM`):
  vanilla       direct answer, no pauses, no Seq-VCR;
  pause         K pause tokens between question and answer (`data.num_pause`);
  seqvcr        Seq-VCR on the final block (projection `model.seq_vcr.proj_dim`);
  seqvcr_pause  both;
  cot           chain-of-thought answers (no pauses, no Seq-VCR).
`data.seq_len` is set to the task's longest example under the arm (pauses and CoT lengthen it).

Pause tokens share ONE learned embedding: every pause is the same token id (tokenizer PAUSE_ID), so
its row of the embedding table is the shared pause embedding; </pause_start> and </pause_end> have
their own rows. The pipeline puts no CE on question or pause positions (data.loss_scope='answer').

Sweeps (`python -m lime_jax.sweep --config=experiments/seqvcr_mult.py --specs=default,seqvcr_pause
--sweep=lambdas`): SWEEPS maps a name to the per-member override lists.
"""

from __future__ import annotations

import ml_collections

from lime_jax.data import pipeline, tasks

ARMS = ("vanilla", "pause", "seqvcr", "seqvcr_pause", "cot")

# SPEC §4 ablation plan.
LAMBDA_PAIRS = ((0.5, 0.002), (1.0, 0.004), (2.0, 0.008), (0.05, 0.25), (0.1, 0.5), (0.2, 1.0))
PROJ_DIMS = (512, 1024, 2048, 4096)
SWEEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "lambdas": tuple((f"model.seq_vcr.lambda1={l1}", f"model.seq_vcr.lambda2={l2}")
                     for l1, l2 in LAMBDA_PAIRS),
    "proj_dim": tuple((f"model.seq_vcr.proj_dim={p}",) for p in PROJ_DIMS),
}


def task_cot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The task sub-config holding the `cot` switch."""
  return c.data[c.data.task]


def apply_arm(c: ml_collections.ConfigDict, arm: str, num_pause: int, config_file: str) -> None:
  """Sets pauses / Seq-VCR / CoT for `arm` (Seq-VCR coefficients come from the preset)."""
  if arm not in ARMS:
    raise ValueError(f"Unknown arm {arm!r} for {config_file}; use one of {', '.join(ARMS)}, e.g. "
                     f"--config={config_file}:default,seqvcr_pause.")
  c.data.num_pause = num_pause if arm in ("pause", "seqvcr_pause") else 0
  c.model.seq_vcr.enabled = arm in ("seqvcr", "seqvcr_pause")
  task_cot(c).cot = arm == "cot"
  c.eval.greedy = True
  fit_seq_len(c)


def fit_seq_len(c: ml_collections.ConfigDict) -> None:
  """`data.seq_len` = the smallest that fits the task's longest example with the configured pauses."""
  task = tasks.get_task(c.data, int(c.seed))
  c.data.seq_len = pipeline.required_seq_len(task.tokenizer, task.longest_example(), int(c.data.num_pause))


def get_config(spec: str | None, presets: dict, config_file: str, num_pause: dict[str, int]
               ) -> ml_collections.ConfigDict:
  """`PRESET[,ARM]` -> config (arm default: seqvcr_pause). `num_pause[preset]` is K for the pause arms."""
  from lime_jax.config import default_config
  from lime_jax.presets import apply_preset
  preset, _, arm = (spec or "default").partition(",")
  preset = preset or "default"
  config = apply_preset(default_config(), presets, preset, config_file)
  apply_arm(config, arm or "seqvcr_pause", num_pause.get(preset, 2), config_file)
  return config
