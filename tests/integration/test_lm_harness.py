"""lime_jax's lm-evaluation-harness backend (lime_jax/evals/lm_harness.py) against the harness's own `hf`
backend on one tiny random Llama, offline: local task YAMLs over small jsonl files (multiple choice,
rolling log-likelihood, generate_until), with a tokenizer without BOS and one that adds BOS."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from lime_jax.config import default_config  # noqa: E402
from lime_jax.evals.lm_harness import LimeJaxLM  # noqa: E402
from lime_jax.probes import lm as lm_probe  # noqa: E402
from lime_jax.probes import pretrained  # noqa: E402
from tests.helpers.harness_tiny import WORDS, make_folder, write_tasks  # noqa: E402

MAX_LENGTH = 64  # both backends; short enough that the rolling documents take several windows


@pytest.fixture(scope="module")
def offline():
  """The Hub unreachable for this module's tests (local files only)."""
  saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
  os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  yield
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  return write_tasks(tmp_path_factory.mktemp("harness"))


@pytest.fixture(scope="module", params=["no_bos", "bos"])
def folder(request, tmp_path_factory):
  return make_folder(str(tmp_path_factory.mktemp(request.param)), bos=request.param == "bos")


def _run(lm, task_dir: str, tasks: list[str], **options) -> dict:
  return lm_eval.simple_evaluate(
    model=lm,
    tasks=tasks,
    task_manager=TaskManager(include_path=task_dir, include_defaults=False),
    log_samples=True,
    bootstrap_iters=0,
    **options,
  )


def _responses(results: dict, task: str) -> list:
  return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def both(offline, folder, task_dir):
  """The two backends' results on the three tasks (tiny_mc also 2-shot)."""
  from lm_eval.models.huggingface import HFLM

  # By its registered name and a model_args string, as `lm_eval.simple_evaluate(model="lime_jax", ...)`.
  ours = lm_eval.api.registry.get_model("lime_jax").create_from_arg_string(
    f"model={folder},batch_size=4,max_length={MAX_LENGTH},gen_chunk=5",  # 12 tokens: 3 decoding calls
    {"device": "cpu", "max_batch_size": None},
  )
  assert isinstance(ours, LimeJaxLM)
  theirs = HFLM(pretrained=folder, device="cpu", dtype="float32", batch_size=4, max_length=MAX_LENGTH)
  tasks = ["tiny_mc", "tiny_ppl", "tiny_gen"]
  return {
    "zero": (_run(ours, task_dir, tasks), _run(theirs, task_dir, tasks)),
    "shots": (
      _run(ours, task_dir, ["tiny_mc"], num_fewshot=2),
      _run(theirs, task_dir, ["tiny_mc"], num_fewshot=2),
    ),
    "lm": ours,
  }


@pytest.mark.parametrize("run", ["zero", "shots"])
def test_multiple_choice_equals_the_hf_backend(both, run):
  ours, theirs = both[run]
  got, want = _responses(ours, "tiny_mc"), _responses(theirs, "tiny_mc")
  assert len(got) == 8 and all(len(choices) == 4 for choices in got)
  for doc_got, doc_want in zip(got, want):
    for [(ll, greedy)], [(ll_hf, greedy_hf)] in zip(doc_got, doc_want):
      assert ll == pytest.approx(ll_hf, abs=1e-4)
      assert greedy == greedy_hf
  for metric in ("acc,none", "acc_norm,none"):
    assert ours["results"]["tiny_mc"][metric] == theirs["results"]["tiny_mc"][metric]


def test_rolling_loglikelihood_equals_the_hf_backend(both):
  ours, theirs = both["zero"]
  got = [r[0][0] for r in _responses(ours, "tiny_ppl")]
  want = [r[0][0] for r in _responses(theirs, "tiny_ppl")]
  assert len(got) == 3 and got == pytest.approx(want, rel=1e-5)
  for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
    assert ours["results"]["tiny_ppl"][metric] == pytest.approx(
      theirs["results"]["tiny_ppl"][metric], rel=1e-5
    )


def test_generate_until_equals_the_hf_backend(both):
  ours, theirs = both["zero"]
  got, want = _responses(ours, "tiny_gen"), _responses(theirs, "tiny_gen")
  assert got == want
  assert any(r[0][0] for r in got), "every generation is empty: the comparison would be vacuous"
  assert ours["results"]["tiny_gen"]["exact_match,none"] == theirs["results"]["tiny_gen"]["exact_match,none"]


def test_rolling_loglikelihood_is_minus_the_heldout_loss(offline, folder, tmp_path):
  """The `lm` probe's held-out loss (a text run's eval windows, probes/lm.py `heldout`) over a stream
  `EOS doc EOS` cut in windows of the harness's length scores exactly the rolling windows of `doc`."""
  window = 16
  lm = LimeJaxLM.from_path(folder, max_length=window)
  if lm.tokenizer.add_bos:
    pytest.skip("the held-out stream has no BOS: its windows are the harness's for a tokenizer without one")
  words, ids = [], []
  while len(ids) < 3 * window or len(ids) % window:  # whole windows only
    words.append(WORDS[len(words) % len(WORDS)])
    ids = lm.tok_encode(" ".join(words))
  text = " ".join(words)
  [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])

  val = tmp_path / "val.jsonl"
  val.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": text}) + "\n")  # EOS, doc, EOS
  config = default_config()
  config.data.task, config.data.seq_len, config.data.tokenizer = "text", window, folder
  config.data.text.update(source="files", files=str(val), eval_files=str(val))
  _, model_cfg, params, _ = pretrained.load(folder)
  ctx = types.SimpleNamespace(
    config=config,
    options=types.SimpleNamespace(num_examples=len(ids) // window),
    params=params,
    model_cfg=model_cfg,
    batch_sharding=None,
  )
  heldout = lm_probe.heldout(ctx, lm_probe._log_probs_fn(ctx))  # pylint: disable=protected-access
  assert heldout["tokens"] == len(ids) and len(ids) >= 3 * window
  assert rolling == pytest.approx(-heldout["ce"] * heldout["tokens"], rel=1e-5)


def test_a_run_workdir_loads_with_its_tokenizer_and_length(tmp_path):
  """A lime_jax run: its checkpoint, its task's tokenizer (BOS first, as its training prompts) and its
  data.seq_len as max_length; a request scores as a direct forward pass does."""
  import jax

  from lime_jax.model import Transformer
  from lime_jax.train import loop as train_lib
  from tests.helpers.runs import tiny_config

  config = tiny_config(num_steps=2, checkpoint_every=2, log_every=1)
  config.eval.greedy = False
  train_lib.train(config, str(tmp_path / "run"))
  lm = LimeJaxLM.from_path(str(tmp_path / "run"), batch_size=2)
  assert lm.max_length == config.data.seq_len and lm.prefix_token_id == lm.tokenizer.bos_id
  context, continuation = "12+3", "4="
  ids = lm.tok_encode(context + continuation)
  assert ids[0] == lm.tokenizer.bos_id and ids[1:] == lm.tokenizer.encode(context + continuation)
  [(ll, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
  logits_TV = Transformer(lm._cfg).apply({"params": lm._params}, jax.numpy.asarray([ids[:-1]]))[0][0]  # pylint: disable=protected-access
  logp_TV = np.asarray(jax.nn.log_softmax(logits_TV, axis=-1))
  n = len(lm.tok_encode(context))
  assert ll == pytest.approx(sum(logp_TV[t - 1, ids[t]] for t in range(n, len(ids))), abs=1e-4)
