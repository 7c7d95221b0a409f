"""Shared helpers of the probes: model variants, jitted forwards with collections, greedy decoding."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lime_jax.evals.scoring import FINE_BUCKETS_FROM, bucket  # noqa: F401  (re-exported)
from lime_jax.model import ModelConfig, Transformer


def probe_model_cfg(
  cfg: ModelConfig, compute_dtype: str | None = None, explicit: bool = False
) -> ModelConfig:
  """`cfg` for probing: no remat, optionally another activation dtype and explicit attention."""
  changes: dict[str, Any] = {"remat_policy": "none"}
  if compute_dtype:
    changes["compute_dtype"] = compute_dtype
  if explicit:
    changes["attention_impl"] = "explicit"
  elif cfg.attention_impl == "cudnn" and jax.default_backend() != "gpu":
    changes["attention_impl"] = "xla"
  return dataclasses.replace(cfg, **changes)


@functools.lru_cache(maxsize=64)
def _jitted_forward(cfg: ModelConfig, collect: tuple[str, ...], logits: bool = True):
  model = Transformer(cfg)

  def forward(params, tokens_BT, positions_BT=None):
    logits_BTV, out = model.apply({"params": params}, tokens_BT, positions_BT, collect=collect)
    return (logits_BTV if logits else None), out.collected

  return jax.jit(forward)


def place_batch(x: np.ndarray, sharding: Any) -> Any:
  """Puts a batch on the devices split over the batch axis when the size allows, else as is."""
  if sharding is None:
    return x
  shards = int(np.prod([sharding.mesh.shape[a] for a in ("data", "fsdp")]))
  return jax.device_put(x, sharding) if x.shape[0] % shards == 0 else x


def host(x: Any, dtype: Any = None) -> np.ndarray:
  """`x` as numpy on this process. An array that spans other processes' devices (parameters sharded over
  several hosts give such outputs) is gathered from all of them first: every process runs the same probe
  code, so each gathers the same array in the same order."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x, dtype)


def forward(
  params: Any,
  cfg: ModelConfig,
  tokens_BT: np.ndarray,
  collect: tuple[str, ...] = (),
  sharding: Any = None,
  positions_BT: np.ndarray | None = None,
  logits: bool = True,
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """(fp32 logits [B, T, V], {name: per-layer collection [L, B, T, ...]}) of a token batch; `positions_BT`
  (default 0..T-1 per row): e.g. the per-document positions of packed text (`model.document_mask`).
  `logits=False`: None instead of the logits, which are then never formed (Gemma 3's 262144-token
  vocabulary makes them 34 GB for 256 x 129 tokens)."""
  place = lambda x: place_batch(np.asarray(x, np.int32), sharding)
  return _jitted_forward(cfg, tuple(collect), logits)(
    params, place(tokens_BT), None if positions_BT is None else place(positions_BT)
  )


def encode_chars(tokenizer: Any, text: str) -> list[int] | None:
  """One id per character of `text` (None when a character is not in the vocabulary)."""
  ids = []
  for ch in text:
    try:
      one = tokenizer.encode(ch)
    except (ValueError, KeyError):
      return None
    if len(one) != 1:
      return None
    ids.append(one[0])
  return ids


def encodable(tokenizer: Any, text: str) -> bool:
  try:
    tokenizer.encode(text)
    return True
  except (ValueError, KeyError):
    return False


ROW_MULTIPLE = 4  # a prompt batch's rows are padded to a multiple of this (`row_bucket`).


def row_bucket(num: int) -> int:
  """Rows of a padded prompt batch: `num` rounded up to a multiple of ROW_MULTIPLE. Few compiled shapes
  (a probe asks the same number of prompts per cell) and little padding: a power of two padded the
  copying probe's 33 prompts to 64 rows, every one of them computed."""
  return -(-max(int(num), 1) // ROW_MULTIPLE) * ROW_MULTIPLE


def pad_rows(
  rows: Sequence[Sequence[int]], pad_id: int, num_rows: int | None = None, extra: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token rows into [num_rows, bucket(max len + extra)] (missing rows repeat the last);
  returns (ids, lengths). A causal model's outputs at a row's real positions ignore the padding."""
  num_rows = num_rows or len(rows)
  lengths = np.array([len(r) for r in rows] + [len(rows[-1])] * (num_rows - len(rows)))
  buf = np.full((num_rows, bucket(int(lengths.max()) + extra)), pad_id, np.int32)
  for i in range(num_rows):
    row = rows[min(i, len(rows) - 1)]
    buf[i, : len(row)] = row
  return buf, lengths


def greedy_decode(
  params: Any,
  cfg: ModelConfig,
  prompts: Sequence[Sequence[int]],
  max_new: int,
  eos_id: int,
  pad_id: int = 0,
  sharding: Any = None,
) -> list[list[int]]:
  """Greedy continuation of each prompt (up to `max_new` tokens, stopping after EOS, EOS excluded).

  Prompts are right-padded into one buffer; the model is causal, so padding after a prompt never
  changes its predictions. One forward over the buffer per new token (answers here are short).
  """
  buf, lengths = pad_rows(prompts, pad_id, num_rows=row_bucket(len(prompts)), extra=max_new)
  done = np.zeros(len(buf), bool)
  done[len(prompts) :] = True  # padding rows
  out: list[list[int]] = [[] for _ in buf]
  rows = np.arange(len(buf))
  for _ in range(max_new):
    logits_BTV, _ = forward(params, cfg, buf, sharding=sharding)
    next_B = host(jnp.argmax(logits_BTV[rows, lengths - 1], axis=-1))
    for i in np.flatnonzero(~done):
      if next_B[i] == eos_id:
        done[i] = True
      else:
        out[i].append(int(next_B[i]))
        buf[i, lengths[i]] = next_B[i]
        lengths[i] += 1
    if done.all():
      break
  return out[: len(prompts)]


def start_ids(tokenizer: Any) -> list[int]:
  """The ids a probe prompt starts with: [BOS] where the tokenizer puts one before a text (`add_bos`:
  Llama, Gemma; not SmolLM2 or GPT-2), and always for the synthetic char / byte tokenizers, whose
  training prompts start with BOS."""
  return [int(tokenizer.bos_id)] if getattr(tokenizer, "add_bos", True) else []


def prompt_ids(tokenizer: Any, question: str, num_pause: int = 0) -> list[int]:
  """BOS + the question's ids [+ pause block], as the training pipeline lays out a prompt."""
  pause = (
    [tokenizer.pause_start_id] + [tokenizer.pause_id] * num_pause + [tokenizer.pause_end_id]
    if num_pause > 0
    else []
  )
  return [tokenizer.bos_id, *tokenizer.encode(question), *pause]


def encode_prompt(tokenizer: Any, text: str, vocab_size: int, specials: bool = True) -> list[int]:
  """The prompt's ids as the model's own tokenizer gives them (`encode_with_specials`: BOS only where
  the tokenizer adds one; a tokenizer without that method, e.g. the char / byte ones, gets BOS + ids as
  in training); `specials=False`: the text's ids alone (a rendered chat template holds its specials).
  Refuses ids outside the model's vocabulary."""
  if not specials:
    ids = [int(i) for i in tokenizer.encode(text)]
  elif hasattr(tokenizer, "encode_with_specials"):
    ids = [int(i) for i in tokenizer.encode_with_specials(text)]
  else:
    ids = [int(tokenizer.bos_id)] + [int(i) for i in tokenizer.encode(text)]
  if max(ids) >= vocab_size:
    raise ValueError(
      f"The tokenizer gives id {max(ids)} for a probe prompt, outside the model's vocabulary "
      f"({vocab_size}); the tokenizer.json does not belong to this checkpoint."
    )
  return ids


TEXT_TOKENS = 128  # tokens per sequence of a pretrained model's probe text (entropy, separability).


def eval_tokens(ctx: Any, num: int) -> tuple[np.ndarray, np.ndarray]:
  """(token ids [B, T], mask of the real tokens [B, T]) of `num` probe sequences: the run's held-out
  data, or for a pretrained model (`ctx.pretrained`) paragraphs of `--text_file` (blank-line separated)
  or of the built-in sentences (`prompts.probe_sentences`): at most TEXT_TOKENS tokens each after the
  specials the model's tokenizer puts first (`encode_prompt`: BOS only where it adds one)."""
  if not ctx.pretrained:
    from lime_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    batch = pipeline.make_eval_batches(ctx.config, "test", num_examples=num, batch_size=num)[0]
    return batch["inputs"], (batch["inputs"] != ctx.tokenizer.pad_id) & (batch["example_mask"][:, None] > 0)
  from lime_jax.probes import prompts  # pylint: disable=import-outside-toplevel

  if ctx.options.text_file:
    from etils import epath  # pylint: disable=import-outside-toplevel

    path = epath.Path(ctx.options.text_file)
    if not path.is_file():
      raise FileNotFoundError(f"--text_file={ctx.options.text_file!r} does not exist.")
    texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()][:num]
    if not texts:
      raise ValueError(f"--text_file={ctx.options.text_file!r} holds no text.")
  else:
    texts = prompts.probe_sentences(num, ctx.options.seed)
  first = len(start_ids(ctx.tokenizer))
  rows = [encode_prompt(ctx.tokenizer, t, ctx.model_cfg.vocab_size)[: TEXT_TOKENS + first] for t in texts]
  ids_BT, lengths_B = pad_rows(rows, 0)
  mask_BT = np.arange(ids_BT.shape[1])[None] < lengths_B[:, None]
  return ids_BT, mask_BT


def train_max_length(config: Any, task_name: str) -> int | None:
  """The longest training length of a copying / counting run (None for other tasks)."""
  if config.data.task != task_name:
    return None
  return int(config.data[task_name].max_length)
