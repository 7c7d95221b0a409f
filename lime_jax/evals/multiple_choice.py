"""Multiple-choice scoring of a language model, as lm-evaluation-harness's log-likelihood tasks.

Each document gives a context, choices and the gold index; the score of a choice is the summed
log-probability of its continuation tokens given `[BOS] few-shot examples + context`. `acc` takes the
argmax of the scores, `acc_norm` that of score / UTF-8 bytes of the continuation. Documents are read
from local jsonl files holding the original datasets' records, turned into requests as the harness's
task definitions do:

- `hellaswag` {activity_label, ctx_a, ctx_b, endings, label}: context `activity_label: ctx_a Ctx_b`
  (cleaned as the harness does), choices ' ' + ending;
- `arc_easy`, `arc_challenge` {question, choices {text, label}, answerKey}: `Question: q\\nAnswer:`,
  ' ' + text;
- `piqa` {goal, sol1, sol2, label}: `Question: goal\\nAnswer:`, ' ' + sol;
- `winogrande` {sentence, option1, option2, answer '1' / '2'}: one context per option (the sentence up
  to `_` with the option filled in), one shared continuation ' ' + the rest of the sentence;
- `generic` {context, choices, gold}: context, ' ' + choice.

Few-shot: k other documents of the same file (drawn with a fixed seed) written as context + gold
choice, joined by a blank line, before the context. Contexts longer than the model's window are cut
from the left.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MC_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "generic")
FEWSHOT_DELIMITER = "\n\n"


# ------------------------------------------------------------------ multiple choice documents


@dataclasses.dataclass(frozen=True)
class McDoc:
  """One multiple-choice question: a (context, continuation) per choice and the gold index."""

  contexts: tuple[str, ...]
  continuations: tuple[str, ...]
  gold: int

  def fewshot_text(self) -> str:
    return self.contexts[self.gold] + self.continuations[self.gold]


def _hellaswag_clean(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def _need(record: dict, fields: Sequence[str], task: str, where: str) -> None:
  missing = [f for f in fields if f not in record]
  if missing:
    raise ValueError(
      f"{where}: a {task} record lacks {missing} (has {sorted(record)}); check the task "
      "name of the file (lm_eval.MC_TASKS)."
    )


def _same_context(context: str, choices: Sequence[str], gold: int) -> McDoc:
  if not 0 <= gold < len(choices):
    raise ValueError(f"gold index {gold} is outside the {len(choices)} choices.")
  return McDoc(tuple(context for _ in choices), tuple(" " + c for c in choices), int(gold))


def to_doc(task: str, record: dict, where: str = "") -> McDoc:
  """The McDoc of one record of `task` (see the module docstring for the fields)."""
  if task == "hellaswag":
    _need(record, ("activity_label", "ctx_a", "ctx_b", "endings", "label"), task, where)
    ctx = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    return _same_context(
      _hellaswag_clean(record["activity_label"] + ": " + ctx),
      [_hellaswag_clean(e) for e in record["endings"]],
      int(record["label"]),
    )
  if task in ("arc_easy", "arc_challenge"):
    _need(record, ("question", "choices", "answerKey"), task, where)
    labels = list(record["choices"]["label"])
    return _same_context(
      f"Question: {record['question']}\nAnswer:", record["choices"]["text"], labels.index(record["answerKey"])
    )
  if task == "piqa":
    _need(record, ("goal", "sol1", "sol2", "label"), task, where)
    return _same_context(
      f"Question: {record['goal']}\nAnswer:", [record["sol1"], record["sol2"]], int(record["label"])
    )
  if task == "winogrande":
    _need(record, ("sentence", "option1", "option2", "answer"), task, where)
    sentence = record["sentence"]
    idx = sentence.index("_")
    rest = " " + sentence[idx + 1 :].strip()
    contexts = tuple(sentence[:idx] + record[f"option{k}"] for k in (1, 2))
    return McDoc(contexts, (rest, rest), int(record["answer"]) - 1)
  if task == "generic":
    _need(record, ("context", "choices", "gold"), task, where)
    return _same_context(record["context"], record["choices"], int(record["gold"]))
  raise ValueError(f"multiple-choice task {task!r} is unknown; use one of {MC_TASKS}.")


def infer_task(path: str) -> str:
  """The task a file holds, from its name (e.g. `arc_challenge-test.jsonl`); the longest match wins."""
  name = os.path.basename(path).lower().replace("-", "_")
  found = [t for t in MC_TASKS if t in name]
  if not found:
    raise ValueError(
      f"cannot tell the task of {path!r} from its name; write it as TASK=PATH with TASK one of {MC_TASKS}."
    )
  return max(found, key=len)


def read_docs(task: str, path: str, limit: int = 0) -> list[McDoc]:
  """McDocs of a jsonl file of `task` records (the first `limit` when > 0)."""
  if not os.path.isfile(path):
    raise ValueError(f"multiple-choice file {path!r} does not exist.")
  docs = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        docs.append(to_doc(task, json.loads(line), f"{path}:{n}"))
  if not docs:
    raise ValueError(f"multiple-choice file {path!r} holds no record.")
  return docs[:limit] if limit > 0 else docs


def requests(docs: Sequence[McDoc], num_shots: int, seed: int) -> list[tuple[str, str]]:
  """(context with few-shot prefix, continuation) for every choice of every document, in order."""
  rng = np.random.default_rng(seed)
  out = []
  for i, doc in enumerate(docs):
    prefix = ""
    if num_shots > 0:
      others = [j for j in range(len(docs)) if j != i]
      if len(others) < num_shots:
        raise ValueError(f"{num_shots}-shot needs {num_shots + 1} documents, the file has {len(docs)}.")
      shots = rng.choice(others, size=num_shots, replace=False)
      prefix = "".join(docs[int(j)].fewshot_text() + FEWSHOT_DELIMITER for j in shots)
    out.extend((prefix + c, k) for c, k in zip(doc.contexts, doc.continuations))
  return out


# ------------------------------------------------------------------ scoring

LogitsFn = Callable[[np.ndarray], np.ndarray]  # int32[B, T] -> float32 log-probabilities [B, T, V].


def encode_request(tokenizer: Any, context: str, continuation: str, max_len: int) -> tuple[list[int], int]:
  """BOS + context + continuation ids (cut from the left to max_len + 1) and the continuation length."""
  cont = tokenizer.encode(continuation)
  if not cont:
    raise ValueError(f"continuation {continuation!r} encodes to no token.")
  ids = [tokenizer.bos_id] + tokenizer.encode(context) + cont
  if len(cont) >= max_len + 1:
    raise ValueError(f"a continuation of {len(cont)} tokens does not fit the model's {max_len} positions.")
  return ids[-(max_len + 1) :], len(cont)


def loglikelihoods(
  log_probs_fn: LogitsFn, tokenizer: Any, reqs: Sequence[tuple[str, str]], max_len: int, batch_size: int = 16
) -> np.ndarray:
  """float64[N]: summed log-probability of each request's continuation given its context."""
  encoded = [encode_request(tokenizer, c, k, max_len) for c, k in reqs]
  out = np.zeros((len(encoded),), np.float64)
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start : start + batch_size]
    width = max(len(ids) for ids, _ in chunk) - 1
    width = min(max_len, -(-width // 16) * 16)  # bucket the lengths: fewer compilations.
    tokens_BT = np.full((batch_size, width + 1), tokenizer.pad_id, np.int32)
    for b, (ids, _) in enumerate(chunk):
      tokens_BT[b, : len(ids)] = ids
    logp_BTV = np.asarray(log_probs_fn(tokens_BT[:, :-1]), np.float64)
    for b, (ids, n) in enumerate(chunk):
      positions = np.arange(len(ids) - 1 - n, len(ids) - 1)  # inputs whose next token is a target.
      out[start + b] = logp_BTV[b, positions, np.asarray(ids[-n:])].sum()
  return out


def score_mc(
  log_probs_fn: LogitsFn,
  tokenizer: Any,
  docs: Sequence[McDoc],
  num_shots: int = 0,
  seed: int = 0,
  max_len: int = 2048,
  batch_size: int = 16,
) -> dict[str, Any]:
  """acc, acc_norm (by continuation bytes), their standard errors and the count of `docs`."""
  reqs = requests(docs, num_shots, seed)
  ll = loglikelihoods(log_probs_fn, tokenizer, reqs, max_len, batch_size)
  correct, correct_norm, k = [], [], 0
  for doc in docs:
    n = len(doc.continuations)
    scores = ll[k : k + n]
    lengths = np.array([max(1, len(c.encode("utf-8"))) for c in doc.continuations], np.float64)
    correct.append(float(np.argmax(scores) == doc.gold))
    correct_norm.append(float(np.argmax(scores / lengths) == doc.gold))
    k += n
  acc, acc_norm = float(np.mean(correct)), float(np.mean(correct_norm))
  stderr = lambda p: float(math.sqrt(p * (1 - p) / max(len(docs) - 1, 1)))
  return {
    "acc": acc,
    "acc_norm": acc_norm,
    "acc_stderr": stderr(acc),
    "acc_norm_stderr": stderr(acc_norm),
    "num_docs": len(docs),
    "num_shots": int(num_shots),
    "loglikelihoods": ll.tolist(),
  }


def parse_task_files(specs: Sequence[str]) -> list[tuple[str, str]]:
  """(task, path) of each `TASK=PATH` or `PATH` (task from the file name)."""
  out = []
  for spec in specs:
    task, path = spec.split("=", 1) if "=" in spec else (infer_task(spec), spec)
    if task not in MC_TASKS:
      raise ValueError(f"--mc_tasks: task {task!r} is unknown; use one of {MC_TASKS}.")
    out.append((task, path))
  return out
