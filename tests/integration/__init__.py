"""Packages together, in process: training runs, orbax checkpoints, data workers, the evaluation runner,
parity with transformers / torch, GGUF files, real weights (marked `integration`)."""
