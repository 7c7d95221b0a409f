"""Exports a lime_jax checkpoint to a Hugging Face folder (config.json + model.safetensors).

  python -m lime_jax.export --workdir=RUN [--step=N] --out=DIR

Reads the run's parameters and saved config (lime_jax.probes.runner.restore_params) and writes the
family that expresses the model (lime_jax/hf/families.py: a default backbone becomes a LlamaForCausalLM),
which `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads to the same logits. Plain topology
only (cross-layer parameters have no HF counterpart). The tokenizer is not written.
"""

from __future__ import annotations

from absl import app, flags


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing this module defines none."""
  flags.DEFINE_string("workdir", None, "The lime_jax run directory (checkpoints/ inside).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest intact one.")
  flags.DEFINE_string("out", None, "Output folder for config.json + model.safetensors.")
  flags.mark_flags_as_required(["workdir", "out"])


def export(workdir: str, out_dir: str, step: int | None = None) -> str:
  """Writes the HF folder of `workdir`'s checkpoint `step` (newest when None); returns the family."""
  from lime_jax import hf  # pylint: disable=g-import-not-at-top
  from lime_jax.probes import runner  # pylint: disable=g-import-not-at-top

  _, config, params = runner.restore_params(workdir, step)
  cfg = runner.model_config_for(config)
  hf.save_pretrained(params, cfg, out_dir)
  return hf.family_for(cfg)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  family = export(FLAGS.workdir, FLAGS.out, FLAGS.step)
  print(f"wrote {FLAGS.out} ({family}: config.json + model.safetensors)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
