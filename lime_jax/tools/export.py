"""Exports a lime_jax checkpoint, or converts a GGUF file, to a Hugging Face folder.

  python -m lime_jax.tools.export --workdir=RUN [--step=N] --out=DIR
  python -m lime_jax.tools.export --gguf=FILE.gguf --out=DIR [--dtype=bfloat16]

A GGUF file becomes config.json + model.safetensors (dequantised, fp32 or bf16) + tokenizer.json +
tokenizer_config.json (special tokens, add_bos_token, chat template): a folder that transformers and
`evaluate --hf` read without the `gguf` library.

Reads the run's parameters and saved config (lime_jax.checkpoint.restore_params) and writes the
family that expresses the model (lime_jax/hf/families.py: a default backbone becomes a LlamaForCausalLM),
which `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads to the same logits. Plain topology
only (cross-layer parameters have no HF counterpart). The tokenizer is not written.
"""

from __future__ import annotations

from absl import app, flags

from lime_jax.model.model_config import DTYPES


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing this module defines none."""
  flags.DEFINE_string("workdir", None, "The lime_jax run directory (checkpoints/ inside).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest intact one.")
  flags.DEFINE_string("gguf", None, "A .gguf file to convert instead of a run (with its tokenizer).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "--gguf: dtype of the written weights.")
  flags.DEFINE_string("out", None, "Output folder for config.json + model.safetensors.")
  flags.mark_flags_as_required(["out"])
  flags.register_validator(
    "workdir",
    lambda _: (flags.FLAGS.workdir is None) != (flags.FLAGS.gguf is None),
    message="give exactly one of --workdir (a lime_jax run) and --gguf (a GGUF file).",
  )


def export(workdir: str, out_dir: str, step: int | None = None) -> str:
  """Writes the HF folder of `workdir`'s checkpoint `step` (newest when None); returns the family."""
  from lime_jax import checkpoint, hf  # pylint: disable=g-import-not-at-top

  restored = checkpoint.restore_params(workdir, step)
  hf.save_pretrained(restored.params, restored.model_cfg, out_dir)
  return hf.family_for(restored.model_cfg)


def convert_gguf(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
  """Writes the HF folder (weights and tokenizer) of a GGUF file; returns the family."""
  from lime_jax import hf  # pylint: disable=g-import-not-at-top
  from lime_jax.gguf import tokenizer as gguf_tokenizer  # pylint: disable=g-import-not-at-top

  cfg, params = hf.load_pretrained(gguf_path, param_dtype=dtype)
  hf.save_pretrained(params, cfg, out_dir)
  gguf_tokenizer.save_hf_tokenizer(gguf_path, out_dir)
  return hf.family_for(cfg)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if FLAGS.gguf:
    family = convert_gguf(FLAGS.gguf, FLAGS.out, FLAGS.dtype)
    print(f"wrote {FLAGS.out} ({family}: config.json + model.safetensors + tokenizer.json)")
    return
  family = export(FLAGS.workdir, FLAGS.out, FLAGS.step)
  print(f"wrote {FLAGS.out} ({family}: config.json + model.safetensors)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
