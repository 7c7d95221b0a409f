"""`evaluate_hf` in process on a tiny random Llama folder with a locally trained BPE: bf16, KV-cached
generation, and the eval tokens of a pretrained context."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lime_jax.probes import common, nl_tasks, pretrained, prompts
from lime_jax.probes.registry import ProbeOptions
from tests.helpers import hf_tiny


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return hf_tiny.make_llama_folder(str(tmp_path_factory.mktemp("hf") / "llama"))


def test_evaluate_hf_bf16_in_process(hf_dir, tmp_path):
  opts = ProbeOptions(lengths=(2, 4), num_examples=2)
  out, results = pretrained.evaluate_hf(
    hf_dir, str(tmp_path / "bf16"), ["copying", "counting"], opts, compute_dtype="bfloat16"
  )
  assert results["compute_dtype"] == "bfloat16" and results["model"]["compute_dtype"] == "bfloat16"
  m = results["probes"]["counting"]["metrics"]
  assert "parse_rate" in m and "histogram" in m
  assert (
    json.loads(open(os.path.join(out, "results.json")).read())["probes"]["copying"]["metrics"][
      "prompt_format"
    ]
    == "natural_language"
  )


def test_kv_cache_generation_matches_uncached_greedy(hf_dir):
  config, model_cfg, params, tok = pretrained.load(hf_dir)
  texts = [
    prompts.copying_prompt("direct", [1, 1, 0]),
    prompts.counting_prompt("cot", [1] * 9),
    prompts.counting_prompt("few_shot", [1, 1], [[1, 1, 1]]),
  ]
  cfg = common.probe_model_cfg(model_cfg)
  got = nl_tasks.generate(params, cfg, tok, texts, max_new=7)
  rows = [common.encode_prompt(tok, t, model_cfg.vocab_size) for t in texts]
  want = [tok.decode(o) for o in common.greedy_decode(params, cfg, rows, 7, tok.eos_id, 0)]
  assert got == want
  assert any(len(g) > 0 for g in got)


def test_eval_tokens_of_a_pretrained_context_are_text(hf_dir):
  _, model_cfg, params, tok = pretrained.load(hf_dir)
  ctx = type(
    "Ctx",
    (),
    {"pretrained": hf_dir, "tokenizer": tok, "model_cfg": model_cfg, "options": ProbeOptions(num_examples=3)},
  )()
  ids, mask = common.eval_tokens(ctx, 3)
  assert ids.shape[0] == 3 and mask.sum(axis=1).min() > 10
  first = ids[0][mask[0]]
  start = common.start_ids(tok)  # the tokenizer's own rule: none for this BPE (no post-processor)
  assert start == [] and list(first[: len(start)]) == start
  body = tok.decode(first[len(start) :])
  assert body == prompts.probe_sentences(3)[0][: len(body)]
  assert np.all(ids[~mask] == 0)


class _Stopped(Exception):
  """Stands for a run killed mid-probe."""


def _stopping_once(real, at: int, calls: list):
  """`real`, counting its calls in `calls`, raising _Stopped instead at call number `at` (once)."""
  stops = [at]

  def wrapped(*args, **kwargs):
    calls.append(1)
    if stops and len(calls) == stops[0]:
      stops.clear()
      raise _Stopped("stopped")
    return real(*args, **kwargs)

  return wrapped


def test_an_interrupted_probe_resumes_after_its_saved_cells_with_the_same_results(
  hf_dir, tmp_path, monkeypatch
):
  """`--resume` (reuse): a copying probe stopped at its 3rd cell keeps 2 cells; the rerun computes only
  the other cells, and its results equal those of a run never interrupted."""
  opts = ProbeOptions(lengths=(2, 4), num_examples=2)
  _, whole = pretrained.evaluate_hf(hf_dir, str(tmp_path / "whole"), ["copying"], opts)
  calls = []  # the first run stops at its 3rd cell, the rerun runs through
  monkeypatch.setattr(nl_tasks, "_generate", _stopping_once(nl_tasks._generate, 3, calls))
  out = str(tmp_path / "resumed")
  with pytest.raises(_Stopped):
    pretrained.evaluate_hf(hf_dir, out, ["copying"], opts, reuse=True)
  saved = json.loads(open(os.path.join(out, "cells", "copying.json")).read())
  assert len(saved["cells"]) == 2
  calls.clear()
  _, resumed = pretrained.evaluate_hf(hf_dir, out, ["copying"], opts, reuse=True)
  total = len(prompts.COPY_STYLES) * len(opts.lengths)
  assert len(calls) == total - 2
  assert resumed["probes"]["copying"]["metrics"] == whole["probes"]["copying"]["metrics"]
  assert not os.path.exists(os.path.join(out, "cells", "copying.json"))


def test_an_interrupted_collapse_probe_resumes_with_the_same_prompts(hf_dir, tmp_path, monkeypatch):
  """Collapse draws its uniform-digit prompts from one generator per family across n: a resumed run
  draws them again, so the cells after the saved ones see the prompts of a run never interrupted."""
  from lime_jax.probes import collapse

  opts = ProbeOptions(collapse_ns=(1, 3, 6), collapse_dtypes=("float32",), collapse_samples=2)
  _, whole = pretrained.evaluate_hf(hf_dir, str(tmp_path / "whole"), ["collapse"], opts)
  calls = []
  monkeypatch.setattr(collapse, "_collapse_cell", _stopping_once(collapse._collapse_cell, 5, calls))
  out = str(tmp_path / "resumed")
  with pytest.raises(_Stopped):
    pretrained.evaluate_hf(hf_dir, out, ["collapse"], opts, reuse=True)
  calls.clear()
  _, resumed = pretrained.evaluate_hf(hf_dir, out, ["collapse"], opts, reuse=True)
  assert len(calls) == len(whole["probes"]["collapse"]["metrics"]["families"]) * 3 - 4
  assert (
    resumed["probes"]["collapse"]["metrics"]["families"] == whole["probes"]["collapse"]["metrics"]["families"]
  )
