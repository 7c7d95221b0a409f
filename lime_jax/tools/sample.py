"""Samples continuations of a prompt from a run's checkpoint (KV-cache decoding, lime_jax/model/decode.py).

  python -m lime_jax.tools.sample --workdir=RUN --prompt="12+7=" [--temperature=0.8] [--top_k=0] \
      [--top_p=0.95] [--max_new_tokens=64] [--num_samples=1] [--seed=0] [--step=N]

The prompt is laid out as in training (BOS, the text, the run's pause block if it trained with pauses);
each sample is printed up to its first EOS. --temperature=0 decodes greedily.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from lime_jax import checkpoint
from lime_jax.model import decode
from lime_jax.probes import common, runner


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing this module defines none."""
  flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
  flags.DEFINE_string("prompt", None, "Text to continue (the task's question, for task runs).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 0, "Keep only the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens with probability mass >= p (1 = off).")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per sample.")
  flags.DEFINE_integer("num_samples", 1, "Samples of the prompt (one batch).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.mark_flags_as_required(["workdir", "prompt"])


def check_options(temperature: float, top_k: int, top_p: float, max_new: int, num_samples: int) -> None:
  """Raises ValueError naming the flag when a sampling option is out of range."""
  if temperature < 0:
    raise ValueError(f"--temperature={temperature} must be >= 0 (0 = greedy).")
  if top_k < 0:
    raise ValueError(f"--top_k={top_k} must be >= 0 (0 = off).")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"--top_p={top_p} must be in (0, 1] (1 = off).")
  if max_new <= 0 or num_samples <= 0:
    raise ValueError(f"--max_new_tokens={max_new} and --num_samples={num_samples} must be positive.")


def generate(
  workdir: str,
  prompt: str,
  *,
  step: int | None = None,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  max_new: int = 64,
  num_samples: int = 1,
  seed: int = 0,
) -> list[str]:
  """The decoded continuations (up to the first EOS) of `prompt` by the run's checkpoint."""
  check_options(temperature, top_k, top_p, max_new, num_samples)
  restored = checkpoint.restore_params(workdir, step)
  config = runner.config_from_dict(restored.config)
  tokenizer = runner.tokenizer_for(config)
  if not common.encodable(tokenizer, prompt):
    raise ValueError(
      f"--prompt={prompt!r}: the run's tokenizer (task {config.data.task!r}) cannot encode "
      "it; use only the characters of its task."
    )
  ids = common.prompt_ids(tokenizer, prompt, int(config.data.num_pause))
  cfg = common.probe_model_cfg(restored.model_cfg)  # no remat; cudnn only on GPU
  prompt_BP = jnp.asarray(np.tile(np.asarray(ids, np.int32), (num_samples, 1)))
  tokens = np.asarray(
    decode.sample(cfg, restored.params, prompt_BP, jax.random.key(seed), max_new, temperature, top_k, top_p)
  )
  return [tokenizer.decode(_until_eos(row, tokenizer.eos_id)) for row in tokens]


def _until_eos(row: Any, eos_id: int) -> list[int]:
  row = [int(t) for t in row]
  return row[: row.index(eos_id)] if eos_id in row else row


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  FLAGS = flags.FLAGS
  try:
    texts = generate(
      FLAGS.workdir,
      FLAGS.prompt,
      step=FLAGS.step,
      temperature=FLAGS.temperature,
      top_k=FLAGS.top_k,
      top_p=FLAGS.top_p,
      max_new=FLAGS.max_new_tokens,
      num_samples=FLAGS.num_samples,
      seed=FLAGS.seed,
    )
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  for i, text in enumerate(texts):
    print(f"[{i}] {FLAGS.prompt}{text}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
