"""Fine-tuning from a checkpoint: `config.model.init_from` = 'hf:PATH' (an HF folder or a .gguf file) or a
lime_jax workdir 'DIR[:STEP]'.

`train.build` resolves the config from the source before validating it, reading the source once
(`read_source`: `hf.model_fields(PATH)` for a Hugging Face folder, the saved config for a workdir):
`set_tokenizer` makes data.tokenizer the source's, then, with the task's tokenizer loaded,
`apply_fields` sets the architecture fields of `config.model`. A field the config sets to a non-default
value must agree with the source, else a ValueError names it. The vocabulary becomes max(source rows, the
task tokenizer's ids): with `data.tokenizer` = the model's tokenizer and pause tokens, the three pause ids
are new rows. `apply_source_fields(config)` does the three steps at once.

`initial_params(config, model_cfg, fresh_params)` (in `train.train`, only when the run starts at step
0; a resumed run restores its own checkpoint) returns the source parameters in the layout of
`fresh_params`: new embedding rows (and unembedding columns) are the mean of the source's rows,
parameters the source lacks (e.g. `seq_vcr_proj`) keep their fresh initialisation, and a shape that
differs otherwise, or a source parameter the model has no place for, is an error naming it. The
optimizer state starts fresh.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lime_jax import config as config_lib
from lime_jax.model.model_config import ModelConfig
from lime_jax.runtime import fileio, options

HF_PREFIX = "hf:"
# A preset that only makes sense fine-tuned (experiments/seqvcr_mult.py:gpt2_table1) sets this; validation
# then asks for the source before anything is built.
REQUIRED = "<required: hf:/path/to/hf_folder>"
# config.model fields that describe how a run computes, not the checkpoint's architecture.
_RUNTIME_FIELDS = (
  "compute_dtype",
  "param_dtype",
  "attention_impl",
  "remat_policy",
  "seq_vcr",
  "init_from",
  "vocab_size",
)
_VOCAB_PARAMS = {"embed": 0, "unembed": 1}  # top-level parameter -> its vocabulary axis.


def parse(spec: str) -> tuple[str, str, int | None]:
  """('hf', PATH, None) or ('workdir', DIR, STEP or None) of an init_from string."""
  if spec.startswith(HF_PREFIX):
    return "hf", spec[len(HF_PREFIX) :], None
  found = re.fullmatch(r"(.+):(\d+)", spec)
  if found and not found.group(1).endswith(":/"):  # 'gs://b/run:400', not the scheme's colon
    return "workdir", found.group(1), int(found.group(2))
  return "workdir", spec, None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in node.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _workdir_meta(workdir: str, step: int | None) -> tuple[int, dict]:
  """(step, the saved config) of a lime_jax workdir's checkpoint (latest when step is None)."""
  from lime_jax import checkpoint  # pylint: disable=import-outside-toplevel

  directory = fileio.join(fileio.absolute(workdir), "checkpoints")
  if not fileio.isdir(directory):
    raise FileNotFoundError(
      f"config.model.init_from={workdir!r}: no checkpoints in {directory}; give a "
      "lime_jax workdir (DIR or DIR:STEP) or 'hf:/path/to/hf_folder'."
    )
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  try:
    steps = ckpt.all_steps()
    step = max(steps) if step is None and steps else step
    if step is None or step not in steps:
      raise FileNotFoundError(
        f"config.model.init_from: step {step} not in {directory}; available: {sorted(steps)}."
      )
    return step, ckpt.read_meta(step).get("config", {})
  finally:
    ckpt.close()


@dataclasses.dataclass(frozen=True)
class Source:
  """What a run takes from its `model.init_from` source, read once (`read_source`)."""

  spec: str
  kind: str  # 'hf' or 'workdir' (`parse`)
  fields: dict[str, Any]  # the architecture fields of config.model (dotted names), vocab_size included
  tokenizer: str  # the source's tokenizer: the HF folder, or a workdir's data.tokenizer ('' = the task's)


def read_source(spec: str) -> Source:
  """Reads the source `spec` (an init_from value) once; its value is checked first, against the field's
  declaration (config.model.init_from in lime_jax/config/sections.py)."""
  options.check_value(
    "model.init_from", str, spec, checks=options.field_checks(config_lib.ModelRunOptions, "init_from")
  )
  kind, path, step = parse(spec)
  if kind == "hf":
    from lime_jax import hf  # pylint: disable=import-outside-toplevel
    from lime_jax.gguf import reader as gguf_reader  # pylint: disable=import-outside-toplevel

    is_gguf = "://" not in path and gguf_reader.gguf_file(path)
    if not is_gguf and (not fileio.isdir(path) or not fileio.exists(fileio.join(path, "config.json"))):
      raise FileNotFoundError(
        f"config.model.init_from={spec!r}: {path!r} is not a Hugging Face folder "
        "with config.json (and *.safetensors), nor a .gguf file."
      )
    return Source(spec, kind, dict(hf.model_fields(path)), path)
  _, saved = _workdir_meta(path, step)
  model = _flatten(saved.get("model", {}))
  fields = {k: v for k, v in model.items() if k.split(".")[0] not in _RUNTIME_FIELDS or k == "vocab_size"}
  return Source(spec, kind, fields, str(saved.get("data", {}).get("tokenizer", "")))


def source_fields(spec: str) -> dict[str, Any]:
  """The architecture fields of config.model (dotted names) the source defines, vocab_size included."""
  return read_source(spec).fields


def _same(a: Any, b: Any) -> bool:
  norm = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
  return norm(a) == norm(b)


def set_tokenizer(config: ml_collections.ConfigDict, source: Source) -> None:
  """`data.tokenizer` '' becomes the source's tokenizer (the HF folder; a workdir's own data.tokenizer);
  another tokenizer than a workdir source's is refused (the embedding rows would mean other tokens)."""
  if not config.data.tokenizer:
    config.data.tokenizer = source.tokenizer
  elif source.kind == "workdir" and config.data.tokenizer != source.tokenizer:
    raise ValueError(
      f"config.data.tokenizer={config.data.tokenizer!r} differs from the tokenizer of "
      f"init_from={source.spec!r} ({source.tokenizer!r}); drop the override."
    )


def apply_source_fields(config: ml_collections.ConfigDict) -> None:
  """Sets data.tokenizer and config.model's architecture fields from `config.model.init_from` (no-op when
  ''): `read_source`, `set_tokenizer`, then `apply_fields` with the task tokenizer's vocabulary."""
  spec = str(config.model.init_from)
  if not spec:
    return
  from lime_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  source = read_source(spec)
  set_tokenizer(config, source)
  apply_fields(config, source, pipeline.vocab_size_for(config))


def apply_fields(config: ml_collections.ConfigDict, source: Source, tokenizer_vocab: int) -> None:
  """Sets config.model's architecture fields from `source`.

  Raises ValueError naming each field the config sets (to a non-default value) differently from the
  source. The model's vocabulary is the larger of the source's rows and the task tokenizer's ids
  (`tokenizer_vocab`).
  """
  spec, fields = source.spec, source.fields
  defaults = _flatten(config_lib.default_config().model)
  current = _flatten(config.model)
  clashes = []
  for name, value in fields.items():
    if name == "vocab_size" or name not in current:
      continue
    if not _same(current[name], defaults.get(name)) and not _same(current[name], value):
      clashes.append(f"config.model.{name}={current[name]!r} but the source has {value!r}")
  if clashes:
    raise ValueError(
      f"config.model.init_from={spec!r} disagrees with the config: "
      + "; ".join(clashes)
      + ". Drop these overrides (the architecture comes from the source) or use another source."
    )
  # A field config.model does not define is harmless when it keeps the backbone's default; a workdir's
  # saved config may also hold fields of older versions.
  model_defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(
    n
    for n in fields
    if n not in current and n != "vocab_size" and not _same(fields[n], model_defaults.get(n, object()))
  )
  if unknown and source.kind == "hf":
    raise ValueError(
      f"config.model.init_from={spec!r}: the source sets fields this version has no config for: {unknown}."
    )
  for name, value in fields.items():
    if name == "vocab_size" or name not in current:
      continue
    node = config.model
    *parents, leaf = name.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  vocab = int(fields.get("vocab_size", 0))
  if int(config.model.vocab_size) and int(config.model.vocab_size) < vocab:
    raise ValueError(
      f"config.model.vocab_size={config.model.vocab_size} is smaller than the source's "
      f"{vocab} embedding rows (init_from={spec!r}); set it to 0."
    )
  config.model.vocab_size = max(vocab, int(config.model.vocab_size), int(tokenizer_vocab or 0))


def _source_params(spec: str, model_cfg: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """The source's parameters: an HF folder / GGUF file read straight into `mesh`'s rule shardings
  (`hf.load_sharded`; each process reads only its devices' blocks), a workdir's as saved."""
  kind, path, step = parse(spec)
  if kind == "hf":
    from lime_jax import hf  # pylint: disable=import-outside-toplevel

    if mesh is None:
      return hf.load_pretrained(path, param_dtype=str(model_cfg.param_dtype))[1]
    return hf.load_sharded(path, mesh, param_dtype=str(model_cfg.param_dtype))[1]
  from lime_jax import checkpoint  # pylint: disable=import-outside-toplevel

  _, state = checkpoint.restore_raw_state(path, step)
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), state["params"])


def resize_vocab(name: str, x: Any, rows: int) -> Any:
  """`x` (numpy, or a jax array: computed where it lies) with its vocabulary axis grown to `rows`; new
  entries are the mean over the source's ids (in fp32)."""
  axis = _VOCAB_PARAMS[name]
  have = x.shape[axis]
  if have == rows:
    return x
  if have > rows:
    raise ValueError(f"params[{name!r}] has {have} vocabulary entries, more than the model's {rows}.")
  xp = jnp if isinstance(x, jax.Array) else np
  mean = x.astype(np.float32).mean(axis=axis, keepdims=True).astype(x.dtype)
  extra = xp.repeat(mean, rows - have, axis=axis)
  return xp.concatenate([x, extra], axis=axis)


def _mesh_of(tree: Any) -> jax.sharding.Mesh | None:
  """The mesh of the tree's first leaf (None: not a jax array with a NamedSharding)."""
  sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None) if jax.tree.leaves(tree) else None
  return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None


def initial_params(
  config: ml_collections.ConfigDict, model_cfg: Any, fresh_params: Any
) -> tuple[Any, list[str]]:
  """(the source's parameters in the structure, shapes, dtypes and shardings of `fresh_params`, the
  parameters kept at their fresh initialisation). An HF source is read sharded onto the mesh of
  `fresh_params` and never gathered on the host."""
  spec = str(config.model.init_from)
  source = _source_params(spec, model_cfg, _mesh_of(fresh_params))
  src = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
  for name in _VOCAB_PARAMS:
    key = jax.tree_util.keystr((jax.tree_util.DictKey(name),))
    if key in src:
      src[key] = resize_vocab(name, src[key], model_cfg.vocab_size)
  kept, used, problems = [], set(), []

  def take(path, fresh):
    key = jax.tree_util.keystr(path)
    if key not in src:
      kept.append(key)
      return fresh
    used.add(key)
    if tuple(src[key].shape) != tuple(fresh.shape):
      problems.append(f"{key}: source {tuple(src[key].shape)} vs model {tuple(fresh.shape)}")
      return fresh
    sharding = getattr(fresh, "sharding", None)
    value = (
      src[key].astype(fresh.dtype) if isinstance(src[key], jax.Array) else np.asarray(src[key], fresh.dtype)
    )
    return jax.device_put(value, sharding) if sharding is not None else value

  params = jax.tree_util.tree_map_with_path(take, fresh_params)
  problems += [f"{k}: in the source, not in the model" for k in src if k not in used]
  if problems:
    raise ValueError(
      f"config.model.init_from={spec!r}: the source's parameters do not fit the model "
      f"({len(problems)}): " + "; ".join(problems[:6])
    )
  return params, kept


def describe(spec: str) -> str:
  kind, path, step = parse(spec)
  if kind == "hf":
    return f"Hugging Face folder {path}"
  return f"workdir {path}" + (f" step {step}" if step else "")
