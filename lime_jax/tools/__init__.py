"""Command-line tools beside the two entry points (`python -m lime_jax.tools.<name>`).

Modules:
  sweep     run the members of a comparison one after another, then tabulate and plot them.
  compare   run every arm of a comparison config and write one table.
  sample    sample continuations of a prompt from a run's checkpoint.
  export    export a checkpoint, or convert a GGUF file, to a Hugging Face folder.
  info      size, FLOPs and memory of a config without training.
  bench     train-step benchmark: compile time, step time, tokens/s, MFU, temp memory per depth.
"""
