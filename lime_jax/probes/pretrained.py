"""Probing a pretrained Hugging Face checkpoint: `python -m lime_jax.evaluate --hf=PATH --out=DIR`.

PATH is a local folder (or a gs:// URL, copied to a local temporary folder first) in the HF layout:
`config.json` + `*.safetensors` (read by `lime_jax.hf.load_sharded`) and the model's own
`tokenizer.json` (read with the `tokenizers` library, `lime_jax.data.subword`), or a GGUF file (weights,
architecture and tokenizer from the one file, lime_jax/gguf/reader.py). The probes run on those
parameters (fp32, or `--param_dtype`) with activations in `--dtype` (float32 or bfloat16). The
parameters are read straight into their shards when `--mesh_fsdp` / `--mesh_tensor` spread them over
the devices (lime_jax/hf/sharded.py: a model larger than one device, on one process or several).
Copying / counting ask in natural language (`nl_tasks.py`; `--chat_template`: as a chat user message),
entropy / separability read text (`common.eval_tokens`). Prompts carry the special tokens the model's
own tokenizer adds (BOS only where it adds one). Results go to DIR: `results.json` (with `hf` = PATH,
the dtypes and the options, among them `chat_template`), the PNGs and `summary.md`, as for a run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import ml_collections
from etils import epath

from lime_jax import config as config_lib
from lime_jax.data import subword
from lime_jax.model.model_config import DTYPES
from lime_jax.probes import nl_tasks, runner
from lime_jax.probes.registry import ProbeOptions, get_probe
from lime_jax.runtime import sharding as shard_lib

_REQUIRED = ("config.json", subword.TOKENIZER_JSON)


def local_folder(path: str) -> str:
  """`path` itself when local; a gs:// (or other remote) folder is copied to a temporary local folder."""
  if "://" not in str(path):
    return os.path.abspath(os.path.expanduser(path))
  remote = epath.Path(path)
  if remote.is_file() and remote.name.endswith(".gguf"):  # one GGUF file
    local = os.path.join(tempfile.mkdtemp(prefix="lime_hf_"), remote.name)
    with remote.open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst)
    return local
  if not remote.is_dir():
    raise FileNotFoundError(f"--hf={path!r} does not exist (or is not a folder).")
  local = tempfile.mkdtemp(prefix="lime_hf_")
  for f in remote.iterdir():
    if f.is_file():
      with f.open("rb") as src, open(os.path.join(local, f.name), "wb") as dst:
        shutil.copyfileobj(src, dst)
  return local


def check_folder(path: str) -> None:
  """Raises FileNotFoundError naming what an HF folder lacks (config.json, weights, tokenizer.json); a
  GGUF checkpoint (a .gguf file, or a folder holding one and no config.json) holds all three."""
  from lime_jax.gguf import reader as gguf_reader  # pylint: disable=import-outside-toplevel

  if gguf_reader.gguf_file(path):
    return
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"--hf={path!r} is neither a folder nor a .gguf file; give a Hugging Face model folder "
      "(config.json, *.safetensors, tokenizer.json), e.g. from save_pretrained(), or a GGUF file."
    )
  missing = [n for n in _REQUIRED if not os.path.isfile(os.path.join(path, n))]
  if not any(n.endswith(".safetensors") for n in os.listdir(path)):
    missing.append("*.safetensors")
  if missing:
    hint = (
      " The probes need the model's own tokenizer: save it next to the weights "
      "(tokenizer.save_pretrained(PATH), or tokenizers' Tokenizer.save(PATH/tokenizer.json))."
      if subword.TOKENIZER_JSON in missing
      else ""
    )
    raise FileNotFoundError(f"--hf={path!r} lacks {', '.join(missing)}.{hint}")


def hf_config(
  path: str, compute_dtype: str = "float32", param_dtype: str = "float32"
) -> ml_collections.ConfigDict:
  """The full config describing the checkpoint: defaults, the model fields of its config.json
  (`hf.model_fields`, dotted names for sub-configs), `compute_dtype`, `param_dtype`,
  `model.init_from='hf:PATH'`."""
  from lime_jax import hf  # pylint: disable=import-outside-toplevel

  if compute_dtype not in DTYPES:
    raise ValueError(f"--dtype={compute_dtype!r} is unknown; use one of {DTYPES}.")
  config = config_lib.default_config()
  for name, value in hf.model_fields(path).items():
    node = config.model
    *parents, leaf = name.split(".")
    for p in parents:
      node = node[p]
    if leaf in node or not node.is_locked:
      node[leaf] = tuple(value) if isinstance(value, list) else value
  if param_dtype not in DTYPES:
    raise ValueError(f"--param_dtype={param_dtype!r} is unknown; use one of {DTYPES}.")
  config.model.compute_dtype = compute_dtype
  config.model.param_dtype = param_dtype
  if "init_from" in config.model:
    config.model.init_from = f"hf:{path}"
  return config


def load(
  path: str,
  compute_dtype: str = "float32",
  mesh: jax.sharding.Mesh | None = None,
  *,
  param_dtype: str = "float32",
  device_bytes: int | None = None,
  stream=None,
) -> tuple[ml_collections.ConfigDict, Any, Any, Any]:
  """(config, ModelConfig, parameters sharded on `mesh` by the training rules, tokenizer) of the HF folder
  or GGUF file `path` (`mesh` default `runner.eval_mesh()`: replicated).

  Before any tensor is read, the parameters' bytes per device and the mesh are printed (process 0, on
  `stream`, default stderr) and a model a device cannot hold is refused (DoesNotFitError naming the
  figure and the mesh axes to enlarge; `device_bytes` None: the device's own figure, none on CPU). Each
  process then reads only the blocks of its own devices (`hf.load_sharded`)."""
  from lime_jax import hf  # pylint: disable=import-outside-toplevel

  check_folder(path)
  config = hf_config(path, compute_dtype, param_dtype)
  tokenizer = subword.load_tokenizer(path)
  mesh = mesh or runner.eval_mesh()
  plan = hf.plan_load(path, mesh, param_dtype=param_dtype)
  if tokenizer.vocab_size > plan.cfg.vocab_size:
    raise ValueError(
      f"{path}/tokenizer.json has {tokenizer.vocab_size} ids but the model's embedding has "
      f"{plan.cfg.vocab_size} rows: the tokenizer does not belong to this checkpoint."
    )
  if jax.process_index() == 0:
    print(f"{path}: {plan.describe()}", file=stream or sys.stderr, flush=True)
  plan.check_fits(device_bytes if device_bytes is not None else shard_lib.device_memory_bytes())
  model_cfg, params = hf.load_sharded(path, mesh, plan=plan)
  model_cfg = dataclasses.replace(model_cfg, compute_dtype=compute_dtype, remat_policy="none")
  return config, model_cfg, params, tokenizer


def evaluate_hf(
  path: str,
  out_dir: str,
  probe_names: list[str],
  options: ProbeOptions | None = None,
  compute_dtype: str = "float32",
  skip_incompatible: bool = False,
  stream=None,
  reuse: bool = False,
  mesh: jax.sharding.Mesh | None = None,
  param_dtype: str = "float32",
  device_bytes: int | None = None,
) -> tuple[str, dict]:
  """Runs the probes on the HF checkpoint at `path`, writing into `out_dir`; returns (out_dir, results).
  `reuse`: probes already saved there with the same options are not run again (`runner.pending`);
  `mesh`, `param_dtype`, `device_bytes`: see `load` (results equal the replicated ones on any mesh)."""
  options = options or ProbeOptions()
  for name in probe_names:
    get_probe(name)  # unknown names fail before anything is loaded
  if not out_dir:
    raise ValueError("--out is required with --hf (the folder that receives results.json and the plots).")
  folder = local_folder(path)
  if options.chat_template:  # before the weights are read
    check_folder(folder)
    nl_tasks.require_chat_template(subword.load_tokenizer(folder))
  mesh = mesh or runner.eval_mesh()
  config, model_cfg, params, tokenizer = load(
    folder, compute_dtype, mesh, param_dtype=param_dtype, device_bytes=device_bytes, stream=stream
  )
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  header = runner._header(out_dir, "hf", config, options)  # pylint: disable=protected-access
  header.update(
    hf=str(path),
    task=None,
    compute_dtype=compute_dtype,
    param_dtype=param_dtype,
    tokenizer_vocab=int(tokenizer.vocab_size),
  )
  results = runner.run_into(
    out_dir,
    header,
    params,
    config,
    probe_names,
    options,
    mesh,
    stream,
    skip_incompatible,
    reuse,
    model_cfg=model_cfg,
    tokenizer=tokenizer,
    pretrained=str(path),
  )
  return out_dir, results
