"""GGUF files (llama.cpp's format), read with the `gguf` library: no lime_jax imports below this package.

Modules:
  reader      `GGUFCheckpoint`: metadata, the equivalent Hugging Face config.json and state dict.
  tokenizer   the tokenizer the file's `tokenizer.ggml.*` metadata describes (`tokenizers` library).
"""
