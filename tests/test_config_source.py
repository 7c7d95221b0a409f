"""One source of truth for the config: `config.model` is generated from the typed dataclasses of
lime_jax/model/model_config.py (defaults, docs, choices), each choice is checked once, generically."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import ml_collections
import pytest

from lime_jax import config as config_lib
from lime_jax.checkpoint import checkpointer
from lime_jax.data import pipeline
from lime_jax.model import model_config
from lime_jax.model.model_config import ModelConfig

PACKAGE = pathlib.Path(config_lib.__file__).parent


def _fields(cls: type, prefix: str = "model") -> Iterator[tuple[str, type, dataclasses.Field]]:
  """(dotted name, owning dataclass, field) of every leaf field of `cls`, sub-dataclasses walked."""
  kinds = model_config.field_types(cls)
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(kinds[f.name]):
      yield from _fields(kinds[f.name], f"{prefix}.{f.name}")
    else:
      yield f"{prefix}.{f.name}", cls, f


def _get(c: ml_collections.ConfigDict, dotted: str) -> Any:
  for key in dotted.split("."):
    c = c[key]
  return c


def _set(c: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *path, leaf = dotted.split(".")
  node = _get(c, ".".join(path))
  with node.ignore_type():
    node[leaf] = value


CHOICE_FIELDS = [
  (name, cls, f) for name, cls, f in _fields(ModelConfig) if model_config.field_choices(cls, f.name)
]
BOOL_FIELDS = [name for name, cls, f in _fields(ModelConfig) if model_config.field_types(cls)[f.name] is bool]


def _leaf_names(node: ml_collections.ConfigDict, prefix: str = "model") -> Iterator[str]:
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaf_names(value, f"{prefix}.{key}")
    else:
      yield f"{prefix}.{key}"


def test_config_model_defaults_are_the_dataclass_defaults():
  c = config_lib.default_config()
  names = {name for name, _, _ in _fields(ModelConfig)}
  assert set(_leaf_names(c.model)) == names | {f"model.{k}" for k in config_lib.MODEL_RUN_OPTIONS}
  for name, _, f in _fields(ModelConfig):
    value = _get(c, name)
    assert value == f.default and type(value) is type(f.default), (name, value, f.default)
  for key, default in config_lib.MODEL_RUN_OPTIONS.items():
    assert c.model[key] == default
  assert ModelConfig.from_config(c.model, vocab_size=17) == ModelConfig(vocab_size=17)


def test_default_config_writes_no_model_default_by_hand():
  """A hand-written `c.model.x = ...` / `m.x = ...` in default_config() would be a second default."""
  source = inspect.getsource(config_lib.default_config)
  assert not re.search(r"\b(m|c\.model)(\.\w+)+\s*=", source), "write model defaults in model_config.py"


def test_every_model_field_is_documented():
  undocumented = [name for name, cls, f in _fields(ModelConfig) if not model_config.field_doc(cls, f.name)]
  assert not undocumented, undocumented


@pytest.mark.parametrize("name,cls,field", CHOICE_FIELDS, ids=[n for n, _, _ in CHOICE_FIELDS])
def test_every_choice_field_rejects_a_wrong_value(name, cls, field):
  choices = model_config.field_choices(cls, field.name)
  assert field.default in choices
  c = config_lib.default_config()
  _set(c, name, "no_such_choice")
  expected = f"config.{name}='no_such_choice' is invalid: choose one of {', '.join(map(repr, choices))}."
  with pytest.raises(ValueError, match=re.escape(expected)):
    config_lib.validate(c)


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_every_bool_field_rejects_a_non_bool(name):
  c = config_lib.default_config()
  _set(c, name, None)
  with pytest.raises(ValueError, match=re.escape(f"config.{name}=None is invalid: must be True or False.")):
    config_lib.validate(c)


def test_seq_vcr_choices_are_checked_even_when_disabled():
  c = config_lib.default_config()
  c.model.seq_vcr.variant = "per_batch"
  with pytest.raises(ValueError, match=r"config\.model\.seq_vcr\.variant='per_batch'"):
    config_lib.validate(c)


def test_choices_are_defined_once():
  assert pipeline.LOSS_SCOPES is config_lib.LOSS_SCOPES
  assert config_lib.TOPOLOGIES == model_config.field_choices(ModelConfig, "topology")
  assert config_lib.LIME_ROUTERS == model_config.field_choices(model_config.LimeConfig, "router")
  assert config_lib.REMAT_POLICIES == model_config.field_choices(ModelConfig, "remat_policy")
  c = config_lib.default_config()
  c.data.loss_scope = "answers"
  with pytest.raises(
    ValueError,
    match=r"config\.data\.loss_scope='answers' is invalid: choose one of "
    r"'answer', 'all'\.",
  ):
    config_lib.validate(c)


# Modules outside model_config.py that still spell out a model field's choices (duplicates to remove at
# integration). The test fails on any new one, not when one of these goes away.
KNOWN_DUPLICATES = {
  ("model.attention_impl", "model/attention.py"),  # attend(): `impl not in ("xla", "cudnn", "explicit")`
  ("model.lime.init", "model/lime.py"),  # `lc.init not in ("paper", "identity")` (moving to routers/kv.py)
  ("model.lime.init", "model/routers/kv.py"),
  ("model.seq_vcr.variant", "losses/seq_vcr.py"),  # VARIANTS: defined there, model_config.py imports it
  ("model.compute_dtype", "probes/pretrained.py"),  # DTYPES = ("float32", "bfloat16") for --dtype
  ("model.compute_dtype", "evaluate.py"),  # --dtype enum ["float32", "bfloat16"]
  ("model.compute_dtype", "probes/registry.py"),  # collapse_dtypes default: both dtypes (a value)
}


def test_no_other_module_spells_out_a_choice_tuple():
  found = set()
  sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}
  for name, cls, f in CHOICE_FIELDS:
    if name == "model.param_dtype":  # the same choices as compute_dtype
      continue
    choices = model_config.field_choices(cls, f.name)
    spelt = re.compile(r"""[(\[]\s*["']{}["'],\s*["']{}["']""".format(*map(re.escape, choices[:2])))
    found |= {
      (name, path) for path, text in sources.items() if path != "model/model_config.py" and spelt.search(text)
    }
  assert found <= KNOWN_DUPLICATES, sorted(found - KNOWN_DUPLICATES)


def test_checkpoint_backbone_defaults_are_the_dataclass_defaults():
  defaults = model_config.defaults(ModelConfig)
  backbone = checkpointer._BACKBONE_FIELDS  # pylint: disable=protected-access
  assert backbone == {k: defaults[k] for k in backbone}


def test_model_config_resolves_the_config_zeros():
  assert ModelConfig(num_heads=4).num_kv_heads == 4
  assert ModelConfig(num_heads=4, num_kv_heads=2).num_kv_heads == 2
  c = config_lib.default_config()
  with pytest.raises(ValueError, match="vocab_size is 0 and no tokenizer vocab size"):
    ModelConfig.from_config(c.model)
  c.model.vocab_size = 10
  with pytest.raises(ValueError, match=r"config\.model\.vocab_size=10 is smaller than the tokenizer's"):
    ModelConfig.from_config(c.model, vocab_size=20)
  assert ModelConfig.from_config(c.model, vocab_size=8).vocab_size == 10


def test_an_old_saved_config_still_loads():
  """A saved config (JSON: lists for tuples) from a version with fewer fields keeps today's defaults."""
  from lime_jax.probes import runner  # pylint: disable=import-outside-toplevel

  saved = {
    "model": {
      "num_layers": 6,
      "d_model": 64,
      "num_heads": 4,
      "topology": "plain",
      "lime": {"router": "static"},
      "seq_vcr": {"enabled": True, "layers": [1, -1]},
      "global_layers": [],
      "retired_field": 3,
    },
    "data": {"task": "arithmetic"},
    "train": {"batch_size": 8},
  }
  config = runner.config_from_dict(saved)
  config_lib.validate(config)
  cfg = ModelConfig.from_config(config.model, vocab_size=32)
  assert cfg.lime == model_config.LimeConfig(router="static")
  assert cfg.seq_vcr.layers == (1, -1) and cfg.global_layers == ()
  assert cfg.num_kv_heads == 4 and cfg.value_residual == model_config.ValueResidualConfig()
  bare = ml_collections.ConfigDict({"num_layers": 2, "seq_vcr": {"layers": [0]}})  # no sub-sections
  assert ModelConfig.from_config(bare, vocab_size=5) == ModelConfig(
    vocab_size=5, num_layers=2, seq_vcr=model_config.SeqVcrConfig(layers=(0,))
  )


def test_choices_may_come_from_a_registry():
  """A field's choices may be a function (a registry's names, read when checked)."""
  registry = {"a": 1}

  @dataclasses.dataclass(frozen=True)
  class Registered:
    kind: str = model_config.option("a", "a registered name.", lambda: tuple(registry))

  registry["b"] = 2
  assert model_config.field_choices(Registered, "kind") == ("a", "b")
  assert model_config.field_doc(Registered, "kind") == "a registered name."
