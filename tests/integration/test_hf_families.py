"""Pretrained families (lime_jax/hf/): logits and cached decoding against `transformers`, refusals,
sharded loading, export round trips and upcycling into the cross-layer topologies.

Each family is a small random `transformers` model built once per module, saved to a local folder
(no hub) and loaded with `hf.load_pretrained`."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lime_jax import hf, inspect
from lime_jax.model import Transformer, init_cache
from lime_jax.model.decode import greedy_predictions
from lime_jax.model.model_config import ModelConfig

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

V, T, B = 96, 40, 2
_BASE = dict(vocab_size=V, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4)
FAMILY_CONFIGS = {
  # llama3 RoPE scaling (short original context, so every band of frequencies is hit), decoupled
  # head_dim, GQA, untied.
  "llama": (
    "LlamaConfig",
    dict(
      _BASE,
      num_key_value_heads=2,
      head_dim=24,
      tie_word_embeddings=False,
      rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
      },
    ),
  ),
  "llama_bias": (
    "LlamaConfig",
    dict(_BASE, num_key_value_heads=4, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
  ),
  "mistral": (
    "MistralConfig",
    dict(_BASE, num_key_value_heads=2, head_dim=16, sliding_window=8, tie_word_embeddings=False),
  ),
  "qwen2": ("Qwen2Config", dict(_BASE, num_key_value_heads=2, tie_word_embeddings=True)),
  "qwen3": ("Qwen3Config", dict(_BASE, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
  "gemma": ("GemmaConfig", dict(_BASE, num_key_value_heads=1, head_dim=32)),
  "gemma2": (
    "Gemma2Config",
    dict(
      _BASE,
      num_key_value_heads=2,
      head_dim=32,
      sliding_window=8,
      query_pre_attn_scalar=24,
      attn_logit_softcapping=2.0,
      final_logit_softcapping=3.0,
    ),
  ),
  "gpt2": (
    "GPT2Config",
    dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
  ),
  # Linear RoPE scaling on every layer.
  "llama_linear": (
    "LlamaConfig",
    dict(
      _BASE, num_key_value_heads=2, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}
    ),
  ),
  # Both layer types (the window is shorter than T), a RoPE base per layer type with linear scaling on the
  # global layers only, q/k norms, decoupled head_dim and query_pre_attn_scalar.
  "gemma3_text": (
    "Gemma3TextConfig",
    dict(
      _BASE,
      num_hidden_layers=6,
      num_key_value_heads=2,
      head_dim=32,
      sliding_window=8,
      query_pre_attn_scalar=24,
      layer_types=[
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
      ],
      rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
      },
    ),
  ),
}
FAMILIES = list(FAMILY_CONFIGS)
# Families with a sliding window: also checked with the explicit attention implementation.
WINDOWED = ("mistral", "gemma2", "gemma3_text")


def _randomize(model, seed: int) -> None:
  """Random weights everywhere: norms (HF inits them to 1, or 0 for Gemma) and biases too."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_norm = p.ndim == 1 and ("norm" in name or ".ln_" in name)
      p.copy_((1.0 if is_norm else 0.0) + 0.3 * noise if p.ndim == 1 else 0.1 * noise)


def _build(family: str, folder: str):
  name, kwargs = FAMILY_CONFIGS[family]
  config = getattr(transformers, name)(**kwargs)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
  _randomize(model, FAMILIES.index(family))
  model.save_pretrained(folder)
  return model


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """family -> (the torch model, its saved folder), built lazily once per module."""
  root = tmp_path_factory.mktemp("hf")
  cache: dict[str, tuple] = {}

  def get(family: str):
    if family not in cache:
      folder = str(root / family)
      cache[family] = (_build(family, folder), folder)
    return cache[family]

  return get


def _tokens(seed: int = 1, batch: int = B, length: int = T) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, V, (batch, length)).astype(np.int32)


def _hf_logits(model, tokens_BT: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens_BT.astype(np.int64)), use_cache=False).logits.numpy()


def _forward(cfg: ModelConfig, params, tokens_BT) -> np.ndarray:
  logits, _ = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(params, jnp.asarray(tokens_BT))
  return np.asarray(logits)


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_hf(hf_models, family):
  from lime_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  model, folder = hf_models(family)
  cfg, params = hf.load_pretrained(folder)
  assert sharding.unruled_params(params) == []  # every new parameter has a PARAM_AXES rule
  tokens_BT = _tokens()
  theirs = _hf_logits(model, tokens_BT)
  assert np.std(theirs) > 0.1, "logits too flat to test anything"
  impls = ("xla", "explicit") if family in WINDOWED else ("xla",)
  for impl in impls:
    ours = _forward(dataclasses.replace(cfg, attention_impl=impl), params, tokens_BT)
    assert _max_diff(ours, theirs) <= 1e-4, (impl, _max_diff(ours, theirs))


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_loads_and_caches_every_family(hf_models, family):
  """lime_jax.inspect on the folder as a user loads it: logits as transformers', every layer's stream
  read out by the logit lens ending at the model's own distribution."""
  model, folder = hf_models(family)
  loaded = inspect.load(folder)
  assert loaded.tokenizer is None  # these folders hold no tokenizer.json
  tokens_BT = _tokens()
  logits_BTV, acts = inspect.run_with_cache(loaded, tokens_BT, names=("hidden", "mlp_out", "final_norm"))
  assert _max_diff(logits_BTV, _hf_logits(model, tokens_BT)) <= 1e-4
  L, D = loaded.cfg.num_layers, loaded.cfg.d_model
  assert acts["hidden"].shape == (L, B, T, D) and acts["final_norm"].shape == (B, T, D)
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(tokens_BT.astype(np.int64)), output_hidden_states=True)
  # transformers' hidden_states[l + 1] is layer l's output, except the last (after the final norm).
  for l in range(L - 1):
    ref = theirs.hidden_states[l + 1].numpy()
    assert _max_diff(acts["hidden"][l], ref) <= 1e-5 * max(1.0, float(np.max(np.abs(ref)))), l
  lens = inspect.logit_lens(loaded, tokens_BT, top_k=1)
  np.testing.assert_array_equal(lens.top_ids_LBTK[-1, ..., 0], np.argmax(np.asarray(logits_BTV), -1))


def test_families_set_their_options(hf_models):
  """The options each family is meant to exercise are on (a test of the tests)."""
  families = ("llama", "mistral", "gemma2", "gpt2", "gemma3_text")
  cfgs = {f: hf.load_pretrained(hf_models(f)[1])[0] for f in families}
  assert cfgs["llama"].rope_scaling == "llama3" and cfgs["llama"].head_dim == 24
  assert cfgs["mistral"].sliding_window == 8 and cfgs["mistral"].global_layers == ()
  assert cfgs["gemma2"].global_layers == (1,) and cfgs["gemma2"].attn_logit_softcap == 2.0
  assert cfgs["gpt2"].position == "learned" and not cfgs["gpt2"].mlp_gated
  assert T > 2 * cfgs["mistral"].sliding_window
  gemma3 = cfgs["gemma3_text"]
  assert gemma3.global_layers == (1, 4) and gemma3.sliding_window == 8 and T > 2 * gemma3.sliding_window
  assert (gemma3.rope_theta, gemma3.rope_local_theta) == (1e6, 1e4)
  assert (gemma3.rope_scaling, gemma3.rope_factor) == ("linear", 4.0)
  assert gemma3.qk_norm and gemma3.post_norms and gemma3.attn_logit_softcap == 0.0
  assert gemma3.attn_scale_dim == 24.0 and gemma3.head_dim * gemma3.num_heads != gemma3.d_model


def test_gemma3_needs_its_per_layer_rope(hf_models):
  """The parity of the Gemma 3 model rests on each layer's RoPE: the global layers' base and scaling on
  every layer, or the local base on every layer, or no linear scaling, each break it (a test of the test)."""
  model, folder = hf_models("gemma3_text")
  cfg, params = hf.load_pretrained(folder)
  tokens_BT = _tokens()
  theirs = _hf_logits(model, tokens_BT)
  assert _max_diff(_forward(cfg, params, tokens_BT), theirs) <= 1e-4
  for wrong in (
    dict(rope_local_theta=0.0),  # rope_theta (scaled) on every layer
    dict(rope_theta=cfg.rope_local_theta, rope_scaling="none"),  # the local base on every layer
    dict(rope_scaling="none"),  # no scaling of the global layers
  ):
    assert _max_diff(_forward(dataclasses.replace(cfg, **wrong), params, tokens_BT), theirs) > 1e-2, wrong


def _decode(cfg: ModelConfig, params, tokens_BT: np.ndarray, prompt: int):
  """Greedy continuation of the first `prompt` tokens with the KV cache (the Block cache path): one
  prefill call, then one token per call in a scan. Returns (tokens [B, T], logits [B, T, V])."""
  model = Transformer(cfg)

  @jax.jit
  def run(params, prompt_BP):
    cache = init_cache(cfg, B, T, cfg.dtype)
    positions_BP = jnp.broadcast_to(jnp.arange(prompt), (B, prompt))
    logits_BPV, out = model.apply({"params": params}, prompt_BP, positions_BP, cache=cache)

    def step(carry, t):
      cache, token_B = carry
      logits_B1V, out = model.apply({"params": params}, token_B[:, None], jnp.full((B, 1), t), cache=cache)
      return (out.cache, jnp.argmax(logits_B1V[:, 0], -1).astype(jnp.int32)), (token_B, logits_B1V[:, 0])

    first_B = jnp.argmax(logits_BPV[:, -1], -1).astype(jnp.int32)
    _, (tokens_SB, logits_SBV) = jax.lax.scan(step, (out.cache, first_B), jnp.arange(prompt, T))
    return (
      jnp.concatenate([prompt_BP, tokens_SB.T], axis=1),
      jnp.concatenate([logits_BPV, logits_SBV.transpose(1, 0, 2)], axis=1),
    )

  tokens, logits = run(params, jnp.asarray(tokens_BT[:, :prompt]))
  return np.asarray(tokens), np.asarray(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_matches_hf(hf_models, family):
  """Greedy decoding with the KV cache: the logits at every position equal HF's on the sequence it
  generated, and each generated token is HF's argmax there (so HF's greedy loop gives the same tokens).
  Windowed families and GPT-2 also go through lime_jax/model/decode.py's greedy_predictions."""
  model, folder = hf_models(family)
  cfg, params = hf.load_pretrained(folder)
  prompt = 5
  ours_tokens, ours_logits = _decode(cfg, params, _tokens(seed=2), prompt)
  theirs = _hf_logits(model, ours_tokens)
  assert _max_diff(ours_logits, theirs) <= 1e-4
  np.testing.assert_array_equal(ours_tokens[:, prompt:], theirs[:, prompt - 1 : -1].argmax(-1))
  if family in WINDOWED + ("gpt2",):
    inputs_BT = np.concatenate([ours_tokens[:, :prompt], np.zeros((B, T - prompt), np.int32)], axis=1)
    pred_BT = greedy_predictions(
      cfg, params, jnp.asarray(inputs_BT), jnp.full((B,), prompt, jnp.int32), prefill_len=prompt
    )
    np.testing.assert_array_equal(np.asarray(pred_BT)[:, prompt - 1 : -1], ours_tokens[:, prompt:])


# ---------------------------------------------------------------------------------------- refusals
def _llama_json(**changes) -> dict:
  config = transformers.LlamaConfig(**_BASE).to_dict()
  config.update(changes)
  return config


@pytest.mark.parametrize(
  "changes,field",
  [
    (
      dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
      "rope_parameters.rope_type",
    ),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling.rope_type"),
    (
      dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
      "partial_rotary_factor",
    ),
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(model_type="falcon"), "model_type"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (dict(pretraining_tp=2), "pretraining_tp"),
  ],
)
def test_refuses_unimplemented_llama_features(changes, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    hf.fields_from_hf(_llama_json(**changes))


def test_refuses_unimplemented_features_of_other_families():
  gpt2 = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4).to_dict()
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
    hf.fields_from_hf({**gpt2, "scale_attn_by_inverse_layer_idx": True})
  with pytest.raises(ValueError, match="activation_function"):
    hf.fields_from_hf({**gpt2, "activation_function": "gelu_fast"})
  gemma2 = transformers.Gemma2Config(**_BASE).to_dict()
  with pytest.raises(ValueError, match=r"layer_types\[1\]"):
    hf.fields_from_hf({**gemma2, "layer_types": ["sliding_attention", "chunked_attention"]})
  with pytest.raises(ValueError, match="use_bidirectional_attention"):
    hf.fields_from_hf({**gemma2, "use_bidirectional_attention": True})
  keyed = {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}
  with pytest.raises(ValueError, match="per-layer-type RoPE"):  # only Gemma 3 keys RoPE by layer type
    hf.fields_from_hf({**gemma2, "rope_parameters": keyed})


def _gemma3_json(**changes) -> dict:
  config = transformers.Gemma3TextConfig(**{**_BASE, "num_hidden_layers": 6, "head_dim": 16}).to_dict()
  config.update(changes)
  return config


@pytest.mark.parametrize(
  "changes,field",
  [
    (
      dict(
        rope_parameters={
          "full_attention": {"rope_type": "default", "rope_theta": 1e6},
          "sliding_attention": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        }
      ),
      "rope_parameters.sliding_attention.rope_type",
    ),
    (
      dict(
        rope_parameters={
          "full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0},
          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
      ),
      "rope_parameters.full_attention.rope_type",
    ),
    (dict(rope_parameters={"chunked_attention": {"rope_theta": 1e4}}), "rope_parameters.chunked_attention"),
    (
      dict(rope_parameters=None, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
      "rope_scaling.rope_type",
    ),
    (dict(model_type="gemma3", text_config={}), "model_type='gemma3'.*gemma3_text"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
  ],
)
def test_refuses_unimplemented_gemma3_features(changes, field):
  hf.fields_from_hf(_gemma3_json())  # the unchanged config is read
  with pytest.raises(ValueError, match=field.replace(".", r"\.") if ".*" not in field else field):
    hf.fields_from_hf(_gemma3_json(**changes))


def test_gemma3_reads_the_older_config_spelling():
  """transformers 4's Gemma 3 config.json (rope_theta + rope_scaling for the global layers,
  rope_local_base_freq, every sliding_window_pattern-th layer global) gives the fields of the keyed one."""
  keyed = _gemma3_json(
    rope_parameters={
      "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 5e5},
      "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
    },
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
  )
  legacy = {k: v for k, v in keyed.items() if k not in ("rope_parameters", "layer_types")}
  legacy.update(
    rope_theta=5e5,
    rope_local_base_freq=300.0,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    sliding_window_pattern=3,
  )
  fields = hf.fields_from_hf(keyed)
  assert hf.fields_from_hf(legacy) == fields
  assert fields["global_layers"] == (2, 5) and fields["rope_local_theta"] == 300.0
  assert (fields["rope_theta"], fields["rope_scaling"], fields["rope_factor"]) == (5e5, "linear", 8.0)
  # HF's defaults: every 6th layer global, bases 1e6 (global) and 1e4 (local).
  bare = {k: v for k, v in legacy.items() if k not in ("rope_theta", "rope_local_base_freq", "rope_scaling")}
  bare.pop("sliding_window_pattern")
  fields = hf.fields_from_hf(bare)
  assert fields["global_layers"] == (5,) and (fields["rope_theta"], fields["rope_local_theta"]) == (1e6, 1e4)
  assert fields["rope_scaling"] == "none"


def test_missing_folder_and_weights_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.model_fields(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(_llama_json()))
  with pytest.raises(FileNotFoundError, match="safetensors"):
    hf.load_pretrained(str(tmp_path))


def test_state_dict_with_extra_weights_is_refused(hf_models, tmp_path):
  """A checkpoint whose tensors the config does not describe (here: biases) is refused, not dropped."""
  _, folder = hf_models("llama_bias")
  config = hf.read_config(folder)
  config.update(attention_bias=False)
  for name in os.listdir(folder):
    os.symlink(os.path.join(folder, name), tmp_path / name)
  os.remove(tmp_path / "config.json")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="q_proj.bias"):
    hf.load_pretrained(str(tmp_path))


# ------------------------------------------------------------------------------- sharded checkpoints
def test_sharded_safetensors_load_like_a_single_file(hf_models, tmp_path):
  model, folder = hf_models("qwen2")
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) > 2
  cfg_one, params_one = hf.load_pretrained(folder)
  cfg_sharded, params_sharded = hf.load_pretrained(str(tmp_path))
  assert cfg_one == cfg_sharded
  jax.tree.map(np.testing.assert_array_equal, params_one, params_sharded)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_model_fields_fill_a_config(hf_models, family):
  """`model_fields` are `config.model` fields: written into the default config they validate and give
  the loaded ModelConfig."""
  from lime_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  _, folder = hf_models(family)
  config = config_lib.default_config()
  for name, value in hf.model_fields(folder).items():
    config.model[name] = value
  config_lib.validate(config)
  cfg, _ = hf.load_pretrained(folder)
  assert ModelConfig.from_config(config.model) == cfg


def test_bfloat16_params(hf_models):
  _, folder = hf_models("llama")
  cfg, params = hf.load_pretrained(folder, param_dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip(hf_models, family, tmp_path):
  """lime_jax -> save_pretrained -> transformers loads it -> the same logits; and back to lime_jax."""
  model, folder = hf_models(family)
  cfg, params = hf.load_pretrained(folder)
  hf.save_pretrained(params, cfg, str(tmp_path))
  assert hf.read_config(str(tmp_path))["model_type"] == hf.read_config(folder)["model_type"]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), attn_implementation="eager", dtype=torch.float32
  ).eval()
  tokens_BT = _tokens(seed=3)
  assert _max_diff(_hf_logits(reloaded, tokens_BT), _hf_logits(model, tokens_BT)) <= 1e-5
  cfg_back, params_back = hf.load_pretrained(str(tmp_path))
  assert hf.model_fields(str(tmp_path)) == hf.model_fields(folder)
  assert dataclasses.replace(cfg_back, init_std=cfg.init_std) == cfg
  jax.tree.map(np.testing.assert_array_equal, params_back, params)


# ----------------------------------------------------------------------------------------- upcycling
UPCYCLE = {
  "lime": {"topology": "lime", "lime": {"init": "identity"}},
  "denseformer": {"topology": "denseformer"},
  "hyper_connections": {"topology": "hyper_connections"},
  "value_residual": {"topology": "value_residual", "value_residual": {"init_lambda": 0.0}},
  "value_residual_learnable": {
    "topology": "value_residual",
    "value_residual": {"init_lambda": 0.0, "learnable": True},
  },
}


@pytest.mark.parametrize(
  "family,name", [("llama", name) for name in UPCYCLE] + [("llama_bias", "lime"), ("gpt2", "lime")]
)
def test_upcycling_starts_from_the_pretrained_logits(hf_models, family, name):
  """A pretrained model loaded into a cross-layer topology gives the plain model's logits at step 0
  (LIMe with biases and with LayerNorm too: its kv entry goes through the Block's `project_kv`)."""
  _, folder = hf_models(family)
  plain_cfg, plain_params = hf.load_pretrained(folder)
  changes = dict(UPCYCLE[name])
  subs = {k: v for k, v in changes.items() if isinstance(v, dict)}
  base = ModelConfig(vocab_size=1, topology=changes["topology"])
  for sub, values in subs.items():
    base = dataclasses.replace(base, **{sub: dataclasses.replace(getattr(base, sub), **values)})
  cfg, params = hf.load_pretrained(folder, base)
  assert cfg.topology == changes["topology"] and cfg.vocab_size == V
  tokens_BT = _tokens(seed=4)
  plain = _forward(plain_cfg, plain_params, tokens_BT)
  ours = _forward(cfg, params, tokens_BT)
  assert _max_diff(ours, plain) <= 1e-5
