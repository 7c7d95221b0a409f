"""GGUF checkpoints (lime_jax/gguf/reader.py, tokenizer.py) on small files written here.

Each model is a random `transformers` model written as llama.cpp's converter would
(tests/helpers/gguf_tiny.py). Three readers meet: the original model in transformers, transformers' own
GGUF loader (torch), and lime_jax's (numpy + the `gguf` library, no torch); the first check of each file
is that transformers' GGUF load of it equals the original model, so a wrong writer cannot pass.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import hf
from lime_jax.gguf import reader as gguf_reader
from lime_jax.gguf import tokenizer as gguf_tokenizer
from lime_jax.model import Transformer
from tests.helpers.gguf_tiny import add_tokenizer, write_model

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

V, T = 96, 24
QUANT_TYPES = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def _llama(hidden: int = 64, ffn: int = 112, seed: int = 0, tie: bool = False, vocab: int = V):
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=ffn,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=50_000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=tie,
    max_position_embeddings=256,
  )
  return transformers.LlamaForCausalLM(cfg).eval()


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items() if "rotary" not in k}


def _random_norms_and_biases(model) -> dict[str, np.ndarray]:
  """Draws the model's norm weights and biases (HF initialises them to 0 or 1, where a mix-up between w
  and 1 + w or a dropped bias would not show) and returns its state dict."""
  sd = _state_dict(model)
  for key in sd:
    if "norm" in key or key.endswith("bias"):
      sd[key] = np.random.default_rng(len(key)).normal(0, 0.5, sd[key].shape).astype(np.float32)
  model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
  return sd


def _tokens(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, V, size=(2, T))


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def _lime_logits(path: str, tokens: np.ndarray) -> np.ndarray:
  cfg, params = hf.load_pretrained(path, param_dtype="float32")
  logits, _ = Transformer(cfg).apply({"params": params}, jnp.asarray(tokens))
  return np.asarray(logits)


def _hf_gguf_model(path: str):
  folder, name = os.path.split(path)
  return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_llama_gguf_f32_equals_the_original_model(tmp_path, tie):
  model = _llama(tie=tie)
  path = str(tmp_path / "tiny.gguf")
  write_model(path, "llama", model.config.to_dict(), _state_dict(model))
  tokens = _tokens()
  want = _torch_logits(model, tokens)
  np.testing.assert_allclose(_torch_logits(_hf_gguf_model(path), tokens), want, atol=1e-5)  # the writer
  np.testing.assert_allclose(_lime_logits(path, tokens), want, atol=1e-5)
  # The architecture fields read from the metadata are those of the HF folder.
  model.save_pretrained(tmp_path / "folder")
  fields = hf.model_fields(str(tmp_path / "folder"))
  assert hf.model_fields(path) == fields


def test_without_the_unpermutation_the_logits_differ(tmp_path, monkeypatch):
  """The q / k row permutation is undone: reading the rows as stored breaks the logits."""
  model = _llama()
  path = str(tmp_path / "tiny.gguf")
  write_model(path, "llama", model.config.to_dict(), _state_dict(model))
  monkeypatch.setattr(gguf_reader, "unpermute_rows", lambda w, n: w)
  diff = float(np.abs(_lime_logits(path, _tokens()) - _torch_logits(model, _tokens())).max())
  assert diff > 1e-3  # 100x the tolerance of the test above


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_every_quant_type_reads_like_transformers_and_gguf(tmp_path, qtype):
  """Per type: each parameter equals gguf.quants.dequantize of its stored blocks, and the logits equal
  transformers' GGUF load of the same file. Widths are multiples of 256 (the K-quants' block)."""
  model = _llama(hidden=256, ffn=512)
  path = str(tmp_path / f"tiny-{qtype}.gguf")
  expected = write_model(path, "llama", model.config.to_dict(), _state_dict(model), qtype=qtype)
  ckpt = gguf_reader.GGUFCheckpoint.open(path)
  types = gguf_reader.describe(ckpt)["tensor_types"]
  assert types[qtype] == 2 * 7 + 2  # 7 matrices per layer, the embedding and the output
  sd = gguf_reader.state_dict(ckpt)
  H = 256 // 4
  wq = np.asarray(sd["model.layers.1.self_attn.q_proj.weight"])
  stored = expected["blk.1.attn_q.weight"]  # rows in llama.cpp's interleaved order
  np.testing.assert_array_equal(
    wq.reshape(4, H, 256)[:, : H // 2], stored.reshape(4, H // 2, 2, 256)[:, :, 0]
  )
  np.testing.assert_array_equal(
    np.asarray(sd["model.layers.0.mlp.down_proj.weight"]), expected["blk.0.ffn_down.weight"]
  )
  tokens = _tokens()
  np.testing.assert_allclose(
    _lime_logits(path, tokens), _torch_logits(_hf_gguf_model(path), tokens), rtol=1e-5, atol=1e-4
  )


def test_unreadable_types_architectures_and_folders_are_refused(tmp_path):
  model = _llama(hidden=256, ffn=512)
  sd = _state_dict(model)
  path = str(tmp_path / "q2k.gguf")
  write_model(path, "llama", model.config.to_dict(), sd, qtype="Q8_0")
  ckpt = gguf_reader.GGUFCheckpoint.open(path)
  tensors = dict(ckpt.tensors)
  tensors["blk.0.attn_q.weight"] = dataclasses.replace(tensors["blk.0.attn_q.weight"], kind="Q2_K")
  with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight.*Q2_K"):
    gguf_reader.state_dict(gguf_reader.GGUFCheckpoint(path, ckpt.metadata, tensors))
  other = str(tmp_path / "mamba.gguf")
  write_model(other, "mamba", model.config.to_dict(), {})
  with pytest.raises(ValueError, match="general.architecture='mamba'"):
    hf.model_fields(other)
  two = tmp_path / "two"
  two.mkdir()
  for name in ("a.gguf", "b.gguf"):
    (two / name).write_bytes(open(path, "rb").read())
  with pytest.raises(ValueError, match="several GGUF files"):
    hf.model_fields(str(two))
  one = tmp_path / "one"
  one.mkdir()
  (one / "m.gguf").write_bytes(open(path, "rb").read())
  assert hf.model_fields(str(one)) == hf.model_fields(path)  # a folder holding one file


TEXT = (
  "The quick brown fox, 1234567 times!  Two  spaces\tand a tab.\n\nLe cœur a ses raisons; 日本語 1400万人.\n"
  "Русский текст 42. Emoji 🙂 and <|endoftext|> inside.\n   indented 007\n"
)


def _train_byte_level(tmp_path):
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=["<|endoftext|>", "<|im_start|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator([TEXT * 3, open(__file__).read()], trainer)
  return tok


def test_byte_level_tokenizer_gives_the_original_ids(tmp_path):
  """A 'smollm'-style vocabulary (digits alone, then GPT-2's rule): the ids of the tokenizer it came from,
  and of transformers' GGUF tokenizer; BOS only where the file asks for it."""
  tok = _train_byte_level(tmp_path)
  model = _llama()
  for add_bos in (False, True):
    path = str(tmp_path / f"tok{add_bos}.gguf")
    meta = lambda w: add_tokenizer(w, tok, kind="gpt2", pre="smollm", bos=1, eos=0, add_bos=add_bos)
    write_model(path, "llama", model.config.to_dict(), _state_dict(model), add_metadata=meta)
    ours = gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(path))
    ids = ours.encode(TEXT, add_special_tokens=True).ids
    assert ids == ([1] if add_bos else []) + tok.encode(TEXT).ids
    folder, name = os.path.split(path)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    assert ids == ref(TEXT).input_ids
    assert ours.decode(ids[int(add_bos) :], skip_special_tokens=False) == TEXT
  bad = str(tmp_path / "bad.gguf")
  meta = lambda w: add_tokenizer(w, tok, kind="gpt2", pre="made-up", bos=1, eos=0, add_bos=False)
  write_model(bad, "llama", model.config.to_dict(), _state_dict(model), add_metadata=meta)
  with pytest.raises(ValueError, match="tokenizer.ggml.pre='made-up'"):
    gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(bad))


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
  """A SentencePiece-style vocabulary without merges ('llama' kind, byte fallback): merges rebuilt from
  the scores give transformers' GGUF tokenizer's ids; BOS added by default, as llama.cpp does."""
  from tokenizers import SentencePieceBPETokenizer, Tokenizer

  sp = SentencePieceBPETokenizer()
  sp.train_from_iterator(
    [TEXT * 3, open(__file__).read()], vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]
  )
  model = _llama()
  path = str(tmp_path / "spm.gguf")
  meta = lambda w: add_tokenizer(
    w, Tokenizer.from_str(sp.to_str()), kind="llama", pre=None, bos=1, eos=2, add_bos=True
  )
  write_model(path, "llama", model.config.to_dict(), _state_dict(model), add_metadata=meta)
  ours = gguf_tokenizer.build_tokenizer(gguf_reader.GGUFCheckpoint.open(path))
  folder, name = os.path.split(path)
  ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  for text in (TEXT, "plain words", " leading space"):
    assert ours.encode(text, add_special_tokens=True).ids == ref(text).input_ids, text


def test_gemma3_gguf_equals_the_original_model(tmp_path):
  """Gemma 3: norms stored as 1 + w, q / k norms, the 5:1 sliding pattern and the local RoPE base that
  llama.cpp assumes (written here as llama.cpp's converter does: no pattern or local base in the file)."""
  torch.manual_seed(0)
  cfg = transformers.Gemma3TextConfig(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,  # = query_pre_attn_scalar, which GGUF does not store (llama.cpp scales by key_length)
    sliding_window=6,
    query_pre_attn_scalar=256,
    layer_types=["sliding_attention"] * 5 + ["full_attention"],
    rope_parameters={
      "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    max_position_embeddings=256,
  )
  model = transformers.Gemma3ForCausalLM(cfg).eval()
  sd = _random_norms_and_biases(model)
  path = str(tmp_path / "gemma3.gguf")
  write_model(path, "gemma3", cfg.to_dict(), sd)
  tokens = _tokens()
  want = _torch_logits(model, tokens)
  np.testing.assert_allclose(_torch_logits(_hf_gguf_model(path), tokens), want, atol=1e-4)  # the writer
  np.testing.assert_allclose(_lime_logits(path, tokens), want, atol=1e-4)
  fields = hf.model_fields(path)
  assert fields["global_layers"] == (5,) and fields["rope_local_theta"] == 10_000.0 and fields["qk_norm"]


def test_export_converts_a_gguf_file_to_a_folder_transformers_reads(tmp_path):
  """`python -m lime_jax.tools.export --gguf=FILE --out=DIR`: the folder's model and tokenizer, read by
  transformers and by lime_jax, equal the GGUF file's."""
  from lime_jax.data import subword
  from lime_jax.tools import export

  tok = _train_byte_level(tmp_path)
  model = _llama()
  path = str(tmp_path / "chat.gguf")
  template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|endoftext|>{% endfor %}"

  def meta(writer):
    add_tokenizer(writer, tok, kind="gpt2", pre="smollm", bos=1, eos=0, add_bos=False)
    writer.add_chat_template(template)

  write_model(path, "llama", model.config.to_dict(), _state_dict(model), add_metadata=meta)
  out = str(tmp_path / "folder")
  assert export.convert_gguf(path, out) == "llama"
  tokens = _tokens()
  folder_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_torch_logits(folder_model, tokens), _torch_logits(model, tokens), atol=1e-5)
  want = tok.encode(TEXT).ids
  assert transformers.AutoTokenizer.from_pretrained(out)(TEXT).input_ids == want
  ours = subword.load_tokenizer(out)
  assert ours.encode_with_specials(TEXT) == want and ours.chat_template == template
  from_gguf = subword.load_gguf_tokenizer(path)
  assert from_gguf.encode_with_specials(TEXT) == want and from_gguf.chat_template == template
  assert from_gguf.eos_id == 0 and not from_gguf.add_bos


_OTHER_FAMILIES = {
  # arch: (transformers config class, its kwargs, extra GGUF metadata {key: (value, type)})
  "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=False), {}),
  "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False), {}),
  "gemma": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=32), {}),
  "gemma2": (
    "Gemma2Config",
    dict(
      num_key_value_heads=2,
      head_dim=32,
      query_pre_attn_scalar=32,
      sliding_window=6,
      attn_logit_softcapping=2.0,
      final_logit_softcapping=3.0,
    ),
    {"gemma2.attn_logit_softcapping": 2.0, "gemma2.final_logit_softcapping": 3.0},
  ),
}


@pytest.mark.parametrize("arch", sorted(_OTHER_FAMILIES))
def test_other_architectures_equal_the_original_model(tmp_path, arch):
  """Qwen2 (q/k/v biases), Qwen3 (q/k norms), Gemma (1 + w norms), Gemma 2 (four norms, soft-caps,
  alternating windows) from GGUF equal the original model."""
  name, kwargs, extra = _OTHER_FAMILIES[arch]
  torch.manual_seed(0)
  cfg = getattr(transformers, name)(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    **kwargs,
  )
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  sd = _random_norms_and_biases(model)
  path = str(tmp_path / f"{arch}.gguf")
  types = {float: gguf.GGUFValueType.FLOAT32}
  write_model(path, arch, cfg.to_dict(), sd, extra={k: (v, types[type(v)]) for k, v in extra.items()})
  tokens = _tokens()
  want = _torch_logits(model, tokens)
  np.testing.assert_allclose(_lime_logits(path, tokens), want, atol=1e-4)


def test_evaluate_hf_and_init_from_read_a_gguf_file(tmp_path):
  """`evaluate --hf=FILE.gguf` probes the file with its own tokenizer, like the HF folder it converts to;
  `init_from='hf:FILE.gguf'` takes its fields and tokenizer."""
  from lime_jax import config as config_lib
  from lime_jax.probes import pretrained
  from lime_jax.probes.registry import ProbeOptions
  from lime_jax.tools import export
  from lime_jax.train import init_from

  tok = _train_byte_level(tmp_path)
  model = _llama(vocab=tok.get_vocab_size())
  path = str(tmp_path / "m.gguf")
  meta = lambda w: add_tokenizer(w, tok, kind="gpt2", pre="smollm", bos=1, eos=0, add_bos=False)
  write_model(path, "llama", model.config.to_dict(), _state_dict(model), add_metadata=meta)
  export.convert_gguf(path, str(tmp_path / "folder"))
  options = ProbeOptions(num_examples=2, lengths=(4,), entropy_alphas=(1.0,))
  results = {}
  for name, source in (("gguf", path), ("folder", str(tmp_path / "folder"))):
    _, results[name] = pretrained.evaluate_hf(source, str(tmp_path / name), ["copying", "entropy"], options)
  for probe in ("copying", "entropy"):
    assert results["gguf"]["probes"][probe]["metrics"] == results["folder"]["probes"][probe]["metrics"], probe
  config = config_lib.default_config()
  config.model.init_from = f"hf:{path}"
  config.data.task = "text"
  init_from.apply_source_fields(config)
  assert config.data.tokenizer == path and config.model.num_layers == 2 and config.model.d_model == 64
