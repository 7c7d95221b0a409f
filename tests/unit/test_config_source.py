"""One source of truth for the config: every section is generated from typed dataclasses (`config.model`
from lime_jax/model/model_config.py, a task's `config.data.<task>` from its module, data / train / eval /
mesh / seed from lime_jax/config/sections.py: defaults, docs, choices, ranges), each field is checked once,
generically, and a task's rules live in the task only."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import ml_collections
import pytest

from lime_jax import checkpoint
from lime_jax import config as config_lib
from lime_jax.config import sections
from lime_jax.data import arithmetic, counting, pipeline, tasks
from lime_jax.model import model_config
from lime_jax.model.model_config import ModelConfig
from lime_jax.runtime import options

PACKAGE = pathlib.Path(config_lib.__file__).parents[1]  # lime_jax/ (config_lib is lime_jax/config/)


def _fields(cls: type, prefix: str = "model") -> Iterator[tuple[str, type, dataclasses.Field]]:
  """(dotted name, owning dataclass, field) of every leaf field of `cls`, sub-dataclasses walked."""
  kinds = model_config.field_types(cls)
  for f in dataclasses.fields(cls):
    name = f"{prefix}.{f.name}" if prefix else f.name
    if dataclasses.is_dataclass(kinds[f.name]):
      yield from _fields(kinds[f.name], name)
    else:
      yield name, cls, f


def _get(c: ml_collections.ConfigDict, dotted: str) -> Any:
  for key in filter(None, dotted.split(".")):
    c = c[key]
  return c


def _set(c: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *path, leaf = dotted.split(".")
  node = _get(c, ".".join(path))
  with node.ignore_type():
    node[leaf] = value


# Every leaf field of the config: the model's, its run options and the other sections (seed, data, ...).
SECTION_FIELDS = [*_fields(sections.ModelRunOptions), *_fields(sections.RunConfig, "")]
ALL_FIELDS = [*_fields(ModelConfig), *SECTION_FIELDS]
CHOICE_FIELDS = [(name, cls, f) for name, cls, f in ALL_FIELDS if model_config.field_choices(cls, f.name)]
BOOL_FIELDS = [name for name, cls, f in ALL_FIELDS if model_config.field_types(cls)[f.name] is bool]


def _leaf_names(node: ml_collections.ConfigDict, prefix: str = "model") -> Iterator[str]:
  for key, value in node.items():
    name = f"{prefix}.{key}" if prefix else key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaf_names(value, name)
    else:
      yield name


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


def test_config_section_defaults_are_the_dataclass_defaults():
  c = config_lib.default_config()
  assert set(_leaf_names(c, "")) == {
    name for name, _, _ in SECTION_FIELDS if not name.startswith("model.")
  } | {f"model.{name}" for name, _, _ in _fields(ModelConfig, "")} | {
    name for name, _, _ in _fields(sections.ModelRunOptions)
  }
  for name, _, f in SECTION_FIELDS:
    value = _get(c, name)
    assert value == f.default and type(value) is type(f.default), (name, value, f.default)
  typed = options.from_node(sections.RunConfig, c)
  assert typed == sections.RunConfig() and typed.data.counting == counting.CountingConfig()


def test_default_config_writes_no_default_by_hand():
  """A hand-written `c.model.x = ...` / `c.train.x = ...` in default_config() would be a second default."""
  source = inspect.getsource(config_lib.default_config)
  assert not re.search(r"\b\w+(\.\w+)+\s*=[^=]", source), "declare defaults in the typed sections"


def test_every_field_is_documented():
  undocumented = [name for name, cls, f in ALL_FIELDS if not model_config.field_doc(cls, f.name)]
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


# Modules other than a field's declaring one that spell out its first two choices, each for a reason. The
# test fails on a new one (a second list to remove) and on an entry that no longer holds (drop it here).
KNOWN_DUPLICATES = {
  ("model.seq_vcr.variant", "losses/seq_vcr.py"),  # VARIANTS: defined there, model_config.py imports it
  ("model.compute_dtype", "probes/registry.py"),  # collapse_dtypes default: both dtypes (a value)
  ("data.loss_scope", "data/base.py"),  # LOSS_SCOPES: defined there, sections.py imports it
  ("data.text.file_format", "data/corpus.py"),  # FORMATS: defined there, the declaration reads it
  ("data.text.decode_errors", "data/corpus.py"),  # DECODE_ERRORS: the same
  ("data.counting.variant", "probes/counting.py"),  # `variant in ("sum", "ones")`: a test, not a list
}


def _spelt_choices(sources: dict[str, str]) -> set[tuple[str, str]]:
  """(field, module) of each module but the field's declaring one that spells out its first two choices."""
  found = set()
  for name, cls, f in CHOICE_FIELDS:
    if name == "model.param_dtype":  # the same choices as compute_dtype
      continue
    choices = model_config.field_choices(cls, f.name)
    spelt = re.compile(r"""[(\[]\s*["']{}["'],\s*["']{}["']""".format(*map(re.escape, choices[:2])))
    declared = str(pathlib.Path(inspect.getfile(cls)).relative_to(PACKAGE))
    found |= {(name, path) for path, text in sources.items() if path != declared and spelt.search(text)}
  return found


def test_no_other_module_spells_out_a_choice_tuple():
  sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}
  assert {"model/model_config.py", "config/sections.py", "data/copying.py"} <= sources.keys()
  found = _spelt_choices(sources)
  assert found <= KNOWN_DUPLICATES, f"choices spelt out again: {sorted(found - KNOWN_DUPLICATES)}"
  assert KNOWN_DUPLICATES <= found, f"stale KNOWN_DUPLICATES entries: {sorted(KNOWN_DUPLICATES - found)}"
  # The scan sees a new copy: a module spelling out model.norm_type's choices.
  copy = {**sources, "model/new_layer.py": 'NORMS = ("rms", "layer")\n'}
  assert _spelt_choices(copy) - found == {("model.norm_type", "model/new_layer.py")}


def test_architecture_fields_are_declared_once_and_read_by_checkpoints_and_hf():
  """`option(arch=...)` is the one list: the HF mapping's fields and the checkpoint signature (every
  'params' / 'checkpoint' field; a 'params_if_set' one only when not its default) follow from it."""
  from lime_jax import hf  # pylint: disable=import-outside-toplevel

  arch = lambda *kinds: set(model_config.arch_fields(*kinds))
  assert set(hf.ARCH_FIELDS) == arch("params", "params_if_set", "compute")
  assert {"vocab_size", "num_layers", "d_model"} <= arch("params")
  assert "compute_dtype" not in arch(*model_config.ARCH_KINDS)
  model = config_lib.default_config().model
  assert set(checkpoint.arch_signature(model, 61)) == arch("params", "checkpoint")
  defaults = model_config.defaults(ModelConfig)
  for name in sorted(arch("params_if_set")):
    choices = model_config.field_choices(ModelConfig, name)
    other = next(c for c in choices if c != defaults[name]) if choices else defaults[name] + 1
    model[name] = (not defaults[name]) if isinstance(defaults[name], bool) else other
  assert set(checkpoint.arch_signature(model, 61)) == arch("params", "checkpoint", "params_if_set")
  with pytest.raises(ValueError, match=r"option\(arch='param'\)"):
    model_config.option(0, arch="param")


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


@pytest.mark.parametrize(
  "field,value,fix",
  [
    ("train.learning_rate", -1.0, "must be > 0 (e.g. 1e-3)."),
    ("train.b2", 1.0, "must be in [0, 1) (an Adam beta)."),
    ("train.grad_clip", -1.0, "must be >= 0 (0 disables clipping)."),
    ("train.batch_size", 0, "must be a positive integer."),
    ("eval.batch_size", 0, "must be a positive integer."),
    ("mesh.fsdp", 0, "must be a positive size or -1 (fill the remaining devices)."),
    ("seed", -1, "must be >= 0."),
    ("data.num_pause", -1, "must be >= 0."),
    ("data.seq_len", 3, "must be at least 4 tokens, or 0 to fit the task's longest example."),
    ("data.text.validation_fraction", 1.0, "must be in (0, 1)."),
    ("data.counting.p_one", 1.5, "must be in [0, 1]."),
    ("data.lis.test_fraction", 0.5, "must be in (0, 0.5)."),
    ("train.compilation_cache_dir", None, "must be a string: '' (the user cache dir), 'none' (off) or a"),
    ("model.init_from", "hf:", "use '' (from scratch), 'hf:/path/to/hf_folder'"),
  ],
)
def test_a_declared_range_names_the_field_and_the_fix(field, value, fix):
  c = config_lib.default_config()
  _set(c, field, value)
  with pytest.raises(ValueError, match=re.escape(f"config.{field}={value!r} is invalid: {fix}")):
    config_lib.validate(c)


@pytest.mark.parametrize(
  "field,value",
  [
    ("arithmetic.modulus", 12),
    ("arithmetic.num_operators", 0),
    ("counting.p_one", -0.1),
    ("counting.variant", "bogus"),
    ("copying.max_length", 0),
    ("lis.number_range", 60),
    ("multiplication.num_digits", 19),
  ],
)
def test_a_task_rule_is_the_tasks_own(field, value):
  """The config's validation and the task built directly report a bad task setting with one message: the
  rule is declared once, in the task's module."""
  c = config_lib.default_config()
  _set(c.data, field, value)
  with pytest.raises(ValueError) as from_config:
    config_lib.validate(c)
  c.data.task = field.split(".")[0]
  with pytest.raises(ValueError) as from_task:
    tasks.get_task(c.data, 0)
  assert str(from_config.value) == str(from_task.value)
  assert str(from_config.value).startswith(f"config.data.{field}={value!r} is invalid: ")


def test_the_task_defaults_are_their_config_sections():
  """A task built with no arguments has its section's defaults (written once, in its Config)."""
  for name, cls in tasks.REGISTRY.items():
    params = inspect.signature(cls).parameters
    for f in dataclasses.fields(cls.Config):
      assert params[f.name].default == f.default, (name, f.name)
    assert getattr(sections.DataConfig(), name) == cls.Config()
  assert not re.search(r"\bis_prime\b|% k\b|p_one", inspect.getsource(config_lib))
  assert counting.draw_counting.__defaults__ is None  # p_one: the task's, passed in
  assert arithmetic.ArithmeticTask().modulus == arithmetic.ArithmeticConfig.modulus


def test_an_old_saved_section_still_loads():
  """A section saved by an older version (fewer fields, retired ones) gives today's defaults for the rest."""
  saved = {"batch_size": 8, "retired_field": 1, "wandb": {"project": "p"}}
  options.check_section(sections.TrainConfig, saved, "train")
  train = options.from_node(sections.TrainConfig, saved)
  assert train == sections.TrainConfig(batch_size=8, wandb=sections.WandbConfig(project="p"))


def test_build_resolves_then_validates_once(monkeypatch):
  """train.build: the task and its tokenizer are built once (seq_len 0 fitted with it), the resolved config
  is validated once, and the iterators reuse the built task."""
  from lime_jax.train import loop as train_lib  # pylint: disable=import-outside-toplevel

  calls = {"validate": 0, "get_task": 0}

  def counted(name, fn):
    def call(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)

    return call

  monkeypatch.setattr(config_lib, "validate", counted("validate", config_lib.validate))
  monkeypatch.setattr(tasks, "get_task", counted("get_task", tasks.get_task))
  c = config_lib.default_config()
  c.model.update(num_layers=2, d_model=32, num_heads=2, ffn_dim=64)
  c.data.update(task="counting", seq_len=0, num_pause=2)
  c.data.counting.update(variant="bits", max_length=8)
  c.train.batch_size = c.eval.batch_size = c.eval.num_examples = 4
  run = train_lib.build(c)
  assert calls == {"validate": 1, "get_task": 1}
  tokens = 1 + len("count:11111111=") + (1 + 2 + 1) + len("8") + 1  # BOS, question, pauses, answer, EOS
  assert c.data.seq_len == tokens - 1
  assert run.model_cfg.vocab_size == run.data.tokenizer.vocab_size
  next(pipeline.make_train_iterator(c, data=run.data))
  pipeline.make_eval_batches(c, data=run.data)
  assert calls["get_task"] == 1
