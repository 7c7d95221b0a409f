"""Training: the loop, the train state and step functions, the optimizer, metric sinks and timers.

Modules:
  loop        the training loop (`train(config, workdir)`): build, restore, compile, train, evaluate.
  step        the train state and the pure train / eval step functions (jitted by the loop).
  optimizer   AdamW with parameter groups, warmup + cosine decay, global-norm clipping.
  writers     metric sinks: console progress line, TensorBoard, JSONL, Weights & Biases.
  timing      start-up phase and step timers (tokens/s, MFU).
  init_from   `config.model.init_from`: fine-tuning from a checkpoint (a workdir, an HF folder, a .gguf).
"""
