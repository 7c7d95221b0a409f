"""Data: synthetic tasks, tokenizers and the grain input pipeline.

Modules:
  base        `Example`, the `Task`/`Tokenizer` protocols, split names, the hash-defined test region.
  tokenizer   `CharTokenizer` (one id per alphabet character) and `ByteTokenizer` (UTF-8 bytes),
              sharing 16 fixed special ids (PAD BOS EOS SEP PAUSE_START PAUSE PAUSE_END, 7..15 reserved).
  arithmetic  `ArithmeticTask`: expressions mod a prime, direct or chain-of-thought (Feng et al. 2023).
  copying     `CopyingTask` (Glasses §3.1: last / first / hint / interleaved), the shared tokenizer.
  counting    `CountingTask` (Glasses §3.2: sum / ones / bits / word).
  tasks       `get_task(config.data, seed)`: registry of the synthetic tasks by `config.data.task`; each
              task class declares its `config.data.<task>` section (`Config`) and checks it when built.
  subword     `load_tokenizer` (HF tokenizer.json / folder, SentencePiece .model, GGUF) behind `Tokenizer`.
  chat_template  chat templates of instruction-tuned tokenizers rendered with jinja2 (as transformers).
  corpus      parquet / jsonl / txt shards read with a resumable cursor; `PackIterDataset` packing.
  text        `local_text` tfds builder, the tfds / files document sources, tokenise + pack streams.
  target_bytes  UTF-8 bytes that target tokens decode to (the denominator of bits per byte).
  pipeline    `resolve` (the task and tokenizer built once per run, `data.seq_len=0` fitted),
              `encode_example`, `make_train_iterator` (checkpointable grain iterator, process-sliced
              global batches), `make_eval_batches`, `vocab_size_for`.
"""
