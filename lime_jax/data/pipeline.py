"""From tasks to model batches: example encoding, the checkpointable train iterator, eval batches.

Sequence layout of one question/answer example (`encode_example`):

  BOS question [PAUSE_START PAUSE * num_pause PAUSE_END] [SEP] answer EOS PAD ...

padded to seq_len + 1 tokens; inputs = seq[:-1], targets = seq[1:]. No SEP by default: every task's
question ends with its own delimiter ('=' for arithmetic), which already tells the model where the
answer starts, and with pauses PAUSE_END marks it as well; `add_sep=True` exists for a future task
whose question has no delimiter.

Masks (per target position): `answer_mask` = 1 where the target is an answer token or the final EOS
(exact match is computed on these); `loss_mask` = answer_mask for `data.loss_scope='answer'`, and for
'all' every non-pad target except pause tokens (they are inserted, not text the model must predict).

Train order: the global batch of step s holds the examples with train indices s*B .. s*B+B-1
(B = train.batch_size), and process p of P reads rows p*B/P .. (p+1)*B/P-1 of it, so the global batch
is the same whatever the process count. Arithmetic examples are i.i.d. draws, so index order needs no
shuffle. The iterator is a grain `DatasetIterator` over a `MapDataset`: its state is the next batch
index (`get_state`/`set_state`, `grain.checkpoint.CheckpointSave/CheckpointRestore` under orbax).

A run builds its task (and loads its tokenizer) once, when its config is resolved (`resolve`: data.seq_len
= 0 fitted, the longest example checked against data.seq_len), and hands the `TaskData` to the iterators.

Task 'text' is a stream instead (data/text.py, data/corpus.py): process p reads its share of the
shuffled documents (tfds) or shards (files), tokenised and packed on the fly; its state is a cursor,
so a resumed run continues exactly, but the global batch depends on the process count and the state
restores only under the process count that saved it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from lime_jax.data import base, tasks, text
from lime_jax.data import target_bytes as bytes_lib
from lime_jax.data.base import LOSS_SCOPES  # noqa: F401  (re-exported; defined once, in data/base.py)

FEATURE_KEYS = ("inputs", "targets", "loss_mask", "answer_mask")
_MAX_PREFETCH_THREADS = 16


def _sequence(
  tokenizer: base.Tokenizer, example: base.Example, num_pause: int, add_sep: bool
) -> tuple[list[int], int]:
  """Token ids BOS..EOS of an example and the position where the answer starts."""
  pause = (
    [tokenizer.pause_start_id] + [tokenizer.pause_id] * num_pause + [tokenizer.pause_end_id]
    if num_pause > 0
    else []
  )
  prefix = [tokenizer.bos_id, *tokenizer.encode(example.question), *pause]
  if add_sep:
    prefix.append(tokenizer.sep_id)
  return prefix + tokenizer.encode(example.answer) + [tokenizer.eos_id], len(prefix)


def required_seq_len(
  tokenizer: base.Tokenizer, example: base.Example, num_pause: int = 0, *, add_sep: bool = False
) -> int:
  """The smallest `data.seq_len` that fits `example` (its token count including BOS/EOS, minus 1)."""
  return len(_sequence(tokenizer, example, num_pause, add_sep)[0]) - 1


def encode_example(
  tokenizer: base.Tokenizer,
  example: base.Example,
  seq_len: int,
  num_pause: int,
  loss_scope: str,
  *,
  add_sep: bool = False,
) -> dict[str, np.ndarray]:
  """Model features of one example: `inputs`/`targets` int32[seq_len], masks float32[seq_len].

  `loss_scope` is one of LOSS_SCOPES (config.validate checks `data.loss_scope`)."""
  seq, answer_start = _sequence(tokenizer, example, num_pause, add_sep)
  if len(seq) - 1 > seq_len:
    raise ValueError(
      f"config.data.seq_len={seq_len} is too short for the example {example.text!r}: it needs "
      f"seq_len >= {len(seq) - 1} ({len(seq)} tokens with BOS/EOS, num_pause={num_pause}); "
      f"raise data.seq_len to at least {len(seq) - 1}."
    )
  tokens = np.full((seq_len + 1,), tokenizer.pad_id, np.int32)
  tokens[: len(seq)] = seq
  position = np.arange(1, seq_len + 1)  # position in `tokens` of each target.
  answer_mask = ((position >= answer_start) & (position < len(seq))).astype(np.float32)
  if loss_scope == "answer":
    loss_mask = answer_mask.copy()
  else:  # 'all'
    pauses = np.isin(tokens[1:], (tokenizer.pause_start_id, tokenizer.pause_id, tokenizer.pause_end_id))
    loss_mask = ((position < len(seq)) & ~pauses).astype(np.float32)
  return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": loss_mask, "answer_mask": answer_mask}


class TaskExamples:
  """grain `RandomAccessDataSource` of one split's encoded examples (index -> feature dict)."""

  def __init__(
    self, task: base.Task, split: str, data_config: ml_collections.ConfigDict, length: int = sys.maxsize
  ):
    self._task = task
    self._split = split
    self._seq_len = int(data_config.seq_len)
    self._num_pause = int(data_config.num_pause)
    self._loss_scope = str(data_config.loss_scope)
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self._task.example(self._split, int(index))
    return encode_example(self._task.tokenizer, example, self._seq_len, self._num_pause, self._loss_scope)


def _longest_example(task: base.Task) -> base.Example:
  """The task's longest example (`longest_example`), or its first train example if it has none."""
  longest = getattr(task, "longest_example", None)
  return longest() if longest is not None else task.example("train", 0)


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The configured task and its tokenizer, built once for a run (`resolve`) and handed to the iterators
  (`make_train_iterator`, `make_eval_batches`), which then build nothing again."""

  task: base.Task | None  # None for task 'text' (a corpus, data/text.py)
  tokenizer: base.Tokenizer

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size


def open_task(config: ml_collections.ConfigDict) -> TaskData:
  """Builds the configured task (its section checked by the task) and loads its tokenizer; for task
  'text', the tokenizer of data.tokenizer."""
  d = config.data
  if d.task == tasks.TEXT_TASK:
    return TaskData(None, text.tokenizer_for(d))
  task = tasks.get_task(d, int(config.seed))
  return TaskData(task, task.tokenizer)


def resolve(config: ml_collections.ConfigDict) -> TaskData:
  """The data part of resolving a run's config, once: builds the task and its tokenizer, sets
  `data.seq_len = 0` (synthetic tasks) to the length of the task's longest example (in place) and checks
  that the longest example fits a set data.seq_len. Returns the built task for the iterators."""
  data = open_task(config)
  if data.task is not None:
    d = config.data
    need = required_seq_len(data.tokenizer, _longest_example(data.task), int(d.num_pause))
    if int(d.seq_len) == 0:
      d.seq_len = need
    _check_need(data.task, d, need)
  return data


def fit_seq_len(config: ml_collections.ConfigDict) -> int:
  """Resolves `data.seq_len = 0` (fit to the task): sets it to the smallest length that fits the
  synthetic task's longest example with the configured pauses and tokenizer. Returns data.seq_len (a
  non-zero value is left as set)."""
  if int(config.data.seq_len) == 0:
    resolve(config)
  return int(config.data.seq_len)


def check_fits(task: base.Task, data_config: ml_collections.ConfigDict) -> None:
  """Raises the seq_len error before training when the task's longest example does not fit."""
  _check_need(
    task, data_config, required_seq_len(task.tokenizer, _longest_example(task), int(data_config.num_pause))
  )


def _check_need(task: base.Task, data_config: ml_collections.ConfigDict, need: int) -> None:
  if need > data_config.seq_len:
    raise ValueError(
      f"config.data.seq_len={data_config.seq_len} is too short for task {task.name!r}: its longest "
      f"examples need seq_len >= {need} (num_pause={data_config.num_pause}); raise data.seq_len "
      f"to at least {need}."
    )


def local_batch_size(global_batch: int, process_count: int) -> int:
  """Rows per process; raises naming train.batch_size when it does not divide."""
  if process_count < 1 or global_batch % process_count:
    raise ValueError(
      f"config.train.batch_size={global_batch} must be divisible by the process "
      f"count {process_count}; use a multiple of {process_count}."
    )
  return global_batch // process_count


def shard_batches(
  examples: grain.MapDataset, global_batch: int, process_index: int, process_count: int
) -> grain.MapDataset:
  """Batches of this process: rows p*b..(p+1)*b-1 of each global batch of `global_batch` examples."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  b = local_batch_size(global_batch, process_count)
  # Local batch k holds examples k*b .. k*b+b-1; global step s owns local batches s*P .. s*P+P-1.
  return examples.batch(b, drop_remainder=True)[process_index::process_count]


def _use_default_absl_flags_if_unparsed() -> None:
  """Lets grain's worker processes start in scripts that do not parse absl flags.

  grain 0.2.18 `mp_prefetch` reads an absl flag (worker profiling) and raises UnparsedFlagAccessError
  when flags were never parsed (google/grain#1355, fixed upstream by #1362). Marking them parsed keeps
  every flag at its default; programs run through absl.app are unaffected.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def to_iterator(batches: grain.MapDataset, data_config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  """A checkpointable iterator with `data.prefetch` batches read ahead by threads (and
  `data.num_workers` processes when > 0)."""
  prefetch, workers = int(data_config.prefetch), int(data_config.num_workers)
  if prefetch < 0 or workers < 0:
    raise ValueError(f"config.data.prefetch={prefetch} and config.data.num_workers={workers} must be >= 0.")
  read_options = grain.ReadOptions(
    num_threads=min(prefetch, _MAX_PREFETCH_THREADS), prefetch_buffer_size=prefetch
  )
  dataset = batches.to_iter_dataset(read_options)
  if workers > 0:
    _use_default_absl_flags_if_unparsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, prefetch))
    )
  return iter(dataset)


def _text_train_iterator(
  config: ml_collections.ConfigDict, process_index: int, process_count: int, data: TaskData | None = None
) -> grain.DatasetIterator:
  """Task 'text': this process's share of the documents, tokenised and packed on the fly (in the
  `data.num_workers` grain worker processes when > 0), batched; checkpointable (data/corpus.py)."""
  d = config.data
  b = local_batch_size(int(config.train.batch_size), process_count)
  dataset = text.packed_stream(
    config, "train", process_index, process_count, tokenizer=data.tokenizer if data is not None else None
  ).batch(b, drop_remainder=True)
  if int(d.num_workers) > 0:
    _use_default_absl_flags_if_unparsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=int(d.num_workers), per_worker_buffer_size=max(1, int(d.prefetch))
      )
    )
  return iter(dataset)


def _task(config: ml_collections.ConfigDict, data: TaskData | None) -> base.Task:
  """The task of `data` (built and checked by `resolve`), or built and checked now."""
  if data is not None and data.task is not None:
    return data.task
  task = tasks.get_task(config.data, int(config.seed))
  check_fits(task, config.data)
  return task


def _train_examples(config: ml_collections.ConfigDict, data: TaskData | None = None) -> grain.MapDataset:
  """Infinite MapDataset of train feature dicts in global index order."""
  return grain.MapDataset.source(TaskExamples(_task(config, data), "train", config.data))


def make_train_iterator(
  config: ml_collections.ConfigDict,
  process_index: int = 0,
  process_count: int = 1,
  data: TaskData | None = None,
) -> grain.DatasetIterator:
  """Endless iterator of this process's train batches (dicts of numpy arrays, leading dim
  train.batch_size // process_count); deterministic from config.seed, checkpointable. `data`: the task
  `resolve` built (else it is built here)."""
  local_batch_size(int(config.train.batch_size), process_count)
  if config.data.task == tasks.TEXT_TASK:
    return _text_train_iterator(config, process_index, process_count, data)
  batches = shard_batches(
    _train_examples(config, data), int(config.train.batch_size), process_index, process_count
  )
  return to_iterator(batches, config.data)


def _pad_rows(features: list[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
  """Stacks rows into one batch, padding to batch_size with PAD/zero-mask rows; adds example_mask."""
  batch = {k: np.stack([f[k] for f in features]) for k in FEATURE_KEYS + ("positions",) if k in features[0]}
  pad = batch_size - len(features)
  out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  out["example_mask"] = (np.arange(batch_size) < len(features)).astype(np.float32)
  return out


def make_eval_batches(
  config: ml_collections.ConfigDict,
  split: str = "test",
  num_examples: int | None = None,
  batch_size: int | None = None,
  data: TaskData | None = None,
) -> list[dict[str, np.ndarray]]:
  """Held-out batches (defaults: eval.num_examples rows, eval.batch_size per batch) in index order;
  `data`: the task and tokenizer `resolve` built (else they are built here).

  The last batch is padded: padded rows have PAD tokens, zero masks and `example_mask` 0 (1 on real
  rows). For task 'text', split 'test' means `data.text.eval_split` / `eval_files`; the examples are
  the first windows of that split (all of them when it has fewer), and `num_bytes` float32[B] holds the
  UTF-8 bytes of each row's targets (bits per byte).
  """
  num_examples = int(num_examples if num_examples is not None else config.eval.num_examples)
  batch_size = int(batch_size if batch_size is not None else config.eval.batch_size)
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(
      f"eval num_examples={num_examples} and batch_size={batch_size} must be > 0 "
      "(config.eval.num_examples / config.eval.batch_size)."
    )
  d = config.data
  if d.task == tasks.TEXT_TASK:
    if split not in ("test", d.text.eval_split):
      raise ValueError(f"task 'text' evaluates on data.text.eval_split / eval_files, not {split!r}.")
    source: Any = text.eval_windows(config, num_examples, data.tokenizer if data is not None else None)
    num_examples = len(source)
  else:
    source = TaskExamples(_task(config, data), split, d)
  rows = [source[i] for i in range(num_examples)]
  batches = [_pad_rows(rows[i : i + batch_size], batch_size) for i in range(0, num_examples, batch_size)]
  if d.task == tasks.TEXT_TASK:  # bytes of each row's targets: bits per byte (token_metrics.lm_metrics).
    tokenizer = data.tokenizer if data is not None else text.tokenizer_for(d)
    num_bytes = bytes_lib.target_bytes(
      tokenizer, np.stack([r["targets"] for r in rows]), np.stack([r["loss_mask"] for r in rows])
    )
    for i, b in enumerate(batches):
      chunk = num_bytes[i * batch_size : (i + 1) * batch_size]
      b["num_bytes"] = np.concatenate([chunk, np.zeros((batch_size - len(chunk),), np.float32)])
  return batches


def vocab_size_for(config: ml_collections.ConfigDict) -> int:
  """Vocabulary size of the configured task's tokenizer (a run takes it from `resolve`'s TaskData)."""
  return open_task(config).vocab_size
