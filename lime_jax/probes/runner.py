"""Restores a run's parameters with its saved config, runs probes, writes results, compares runs.

Output of one evaluation: RUN_DIR/eval/<step>/ (RUN_DIR/eval/random_init/ for `--random_init`) with
`results.json` (run info, options and every probe's metrics and summary), one PNG per plot and
`summary.md` (tables and the images). `compare` overlays the same plots of several runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import sys
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lime_jax import config as config_lib
from lime_jax import sharding as shard_lib
from lime_jax.data import pipeline, tasks
from lime_jax.data.tokenizer import ByteTokenizer
from lime_jax.model import ModelConfig, init_params
from lime_jax.probes import plotting
from lime_jax.probes.registry import ProbeContext, ProbeOptions, get_probe


class Progress:
  """One console line: overall probe index, the probe's inner steps (lengths, layers), elapsed time."""

  def __init__(self, probes: list[str], stream=None, width: int = 24):
    self.probes, self.stream, self.width = probes, stream or sys.stderr, width
    self.index, self.total, self.done, self.name = -1, 1, 0, ""
    self.t0 = time.perf_counter()

  def next_probe(self, name: str) -> None:
    """The runner moves to the next probe."""
    self.index += 1
    self.name, self.total, self.done = name, 1, 0
    self._draw("")

  def start(self, name: str, total: int) -> None:
    """A probe announces its number of inner steps."""
    self.name, self.total, self.done = name, max(int(total), 1), 0
    self._draw("")

  def advance(self, label: str) -> None:
    self.done += 1
    self._draw(label)

  def _draw(self, label: str) -> None:
    filled = int(self.width * min(self.done, self.total) / self.total)
    bar = "#" * filled + "." * (self.width - filled)
    elapsed = time.perf_counter() - self.t0
    self.stream.write(f"\r[{self.index + 1}/{len(self.probes)} {self.name}] [{bar}] {self.done}/{self.total} "
                      f"{label:<36.36} {elapsed:6.0f}s")
    self.stream.flush()

  def finish(self) -> None:
    self.stream.write("\n")
    self.stream.flush()


# ------------------------------------------------------------------------------------------- restoring
def _manager(workdir: str) -> ocp.CheckpointManager:
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir!r} does not exist.")
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: expected {directory}. Train with "
                            "`python -m lime_jax.main --workdir=...` first, or use --random_init "
                            "--config=...")
  return ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler()})


def _resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {manager.directory}.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"--step={step} not found in {manager.directory}; available steps: {steps}.")
  return step


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A full config: the defaults, overridden by a saved config's values (fields unknown today are
  ignored; lists become tuples where the default is a tuple)."""
  config = config_lib.default_config()

  def update(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        update(node[key], value)
      elif isinstance(node[key], tuple) and isinstance(value, list):
        node[key] = tuple(value)
      else:
        node[key] = value

  update(config, saved)
  return config


def model_config_for(config: ml_collections.ConfigDict) -> ModelConfig:
  return ModelConfig.from_config(config.model, pipeline.vocab_size_for(config))


def _check_shapes(saved_params: Any, abstract_params: Any, where: str) -> None:
  """Raises ValueError listing the parameters whose checkpoint shape differs from the config's."""
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  saved, want = shapes(saved_params), shapes(abstract_params)
  problems = [f"{k}: checkpoint {saved.get(k)} vs config {v}" for k, v in want.items() if saved.get(k) != v]
  problems += [f"{k}: in the checkpoint, not in the config" for k in saved if k not in want]
  if problems:
    raise ValueError(f"The parameters in {where} do not match the shapes of the run's saved config "
                     f"({len(problems)} differ): " + "; ".join(problems[:6]) +
                     ". The checkpoint and its saved config disagree: was the workdir reused with another "
                     "model?")


def restore_params(workdir: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None
                   ) -> tuple[int, ml_collections.ConfigDict, Any]:
  """(step, the run's saved config, parameters only) restored replicated onto `mesh` (all devices)."""
  manager = _manager(workdir)
  step = _resolve_step(manager, step)
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  config = config_from_dict(meta.get("config", {}))
  model_cfg = model_config_for(config)
  abstract = jax.eval_shape(functools.partial(init_params, model_cfg), jax.random.key(0))
  state_meta = manager.item_metadata(step)["state"]
  saved_tree = getattr(state_meta, "tree", state_meta)
  _check_shapes(saved_tree["params"], abstract, f"{manager.directory}/{step}")
  mesh = mesh or _eval_mesh()
  replicated = shard_lib.replicated(mesh)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=replicated), target)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": target}, restore_args={"params": restore_args}, partial_restore=True)))
  manager.close()
  return step, config, restored["state"]["params"]


def _eval_mesh() -> jax.sharding.Mesh:
  """All devices on the data axis (parameters replicated, probe batches split when they divide)."""
  cfg = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  return shard_lib.make_mesh(cfg)


def random_init_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Freshly initialised parameters (seed `config.seed`), replicated onto `mesh`."""
  config_lib.validate(config)
  mesh = mesh or _eval_mesh()
  init = functools.partial(init_params, model_config_for(config))
  return jax.jit(init, out_shardings=shard_lib.replicated(mesh))(jax.random.key(int(config.seed)))


def tokenizer_for(config: ml_collections.ConfigDict) -> Any:
  if config.data.task == tasks.TEXT_TASK:
    return ByteTokenizer()
  return tasks.get_task(config.data, int(config.seed)).tokenizer


# --------------------------------------------------------------------------------------------- running
def run_probes(params: Any, config: ml_collections.ConfigDict, probe_names: list[str], options: ProbeOptions,
               mesh: jax.sharding.Mesh | None = None, stream=None) -> dict[str, dict]:
  """Runs the named probes; returns {probe: result dict} (see registry.py)."""
  probes = [get_probe(n) for n in probe_names]
  mesh = mesh or _eval_mesh()
  progress = Progress(probe_names, stream)
  ctx = ProbeContext(params=params, model_cfg=model_config_for(config), config=config,
                     tokenizer=tokenizer_for(config), options=options, progress=progress,
                     batch_sharding=shard_lib.batch_sharding(mesh))
  results = {}
  try:
    for probe in probes:
      t0 = time.perf_counter()
      progress.next_probe(probe.name)
      results[probe.name] = probe.run(ctx)
      results[probe.name]["seconds"] = round(time.perf_counter() - t0, 2)
  finally:
    progress.finish()
  return results


def _sanitize(x: Any) -> Any:
  """JSON-ready copy: numpy scalars/arrays as Python values, non-finite floats as None."""
  if isinstance(x, dict):
    return {str(k): _sanitize(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_sanitize(v) for v in x]
  if isinstance(x, np.ndarray):
    return _sanitize(x.tolist())
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def _previous(out_dir: str) -> dict:
  """The results.json already in `out_dir` (probes of earlier invocations), or {}."""
  path = os.path.join(out_dir, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_outputs(out_dir: str, header: dict, results: dict[str, dict]) -> dict:
  """results.json, one PNG per plot, summary.md; returns the results.json content.

  Probes evaluated earlier into the same directory (same checkpoint step) are kept unless re-run, so
  separate invocations (`--probes=collapse`, later `--probes=entropy`) accumulate in one results.json.
  """
  os.makedirs(out_dir, exist_ok=True)
  previous = _previous(out_dir)
  images: dict[str, list[str]] = {}
  for name, result in results.items():
    images[name] = [os.path.basename(plotting.render(spec, out_dir)) for spec in result.get("plots", [])]
  if previous.get("step") == header["step"]:
    results = {**{k: v for k, v in previous.get("probes", {}).items() if k not in results}, **results}
    images = {**{k: v for k, v in previous.get("images", {}).items() if k not in images}, **images}
  content = _sanitize({**header, "probes": results, "images": images})
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(content, f, indent=1, allow_nan=False)
  lines = [f"# Evaluation of `{header['workdir']}` at step {header['step']}", "",
           f"{header['created']} · {header['devices']} · probes: {', '.join(results)}", ""]
  for name, result in results.items():
    lines += [f"## {name} ({result.get('seconds', 0):.1f} s)", ""]
    lines += [f"- {n}" for n in result.get("notes", [])] + ([""] if result.get("notes") else [])
    if result.get("summary"):
      lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result["summary"]]
    lines += [""] + [f"![{img}]({img})" for img in images[name]] + [""]
  with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return content


def _header(workdir: str, step: Any, config: ml_collections.ConfigDict, options: ProbeOptions) -> dict:
  return {"workdir": os.path.abspath(workdir), "step": step,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
          "model": {k: config.model[k] for k in ("num_layers", "d_model", "num_heads", "topology",
                                                 "compute_dtype")},
          "task": config.data.task, "options": dataclasses.asdict(options)}


def evaluate(workdir: str, probe_names: list[str], options: ProbeOptions | None = None,
             step: int | None = None, random_init_config: ml_collections.ConfigDict | None = None,
             stream=None) -> tuple[str, dict]:
  """Evaluates one run (or a random-init model of `random_init_config`); returns (out_dir, results)."""
  options = options or ProbeOptions()
  for name in probe_names:
    get_probe(name)  # unknown names fail before anything is restored
  mesh = _eval_mesh()
  if random_init_config is not None:
    config, params, label = random_init_config, random_init_params(random_init_config, mesh), "random_init"
    os.makedirs(workdir, exist_ok=True)
  else:
    step, config, params = restore_params(workdir, step, mesh)
    label = str(step)
  results = run_probes(params, config, probe_names, options, mesh, stream)
  out_dir = os.path.join(workdir, "eval", label)
  return out_dir, write_outputs(out_dir, _header(workdir, label, config, options), results)


def compare(runs: dict[str, dict], out_dir: str) -> list[str]:
  """Overlays each plot that several runs share and writes one table (compare.md, compare.json)."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  names = list(runs)
  probes = sorted({p for r in runs.values() for p in r["probes"]})
  lines = [f"# Comparison: {', '.join(names)}", ""]
  for probe in probes:
    by_run = {n: runs[n]["probes"][probe] for n in names if probe in runs[n]["probes"]}
    specs: dict[str, dict[str, dict]] = {}
    for run_name, result in by_run.items():
      for spec in result.get("plots", []):
        specs.setdefault(spec["name"], {})[run_name] = spec
    lines += [f"## {probe}", ""]
    rows: dict[str, dict[str, Any]] = {}
    for run_name, result in by_run.items():
      for key, value in result.get("summary", []):
        rows.setdefault(key, {})[run_name] = value
    if rows:
      lines += ["| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
      lines += [f"| {k} | " + " | ".join(str(v.get(n, "")) for n in names) + " |" for k, v in rows.items()]
    for spec_name, spec_by_run in specs.items():
      path = plotting.render_compare(spec_by_run, out_dir)
      if path:
        written.append(path)
        lines.append(f"![{spec_name}]({os.path.basename(path)})")
    lines.append("")
  with open(os.path.join(out_dir, "compare.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  with open(os.path.join(out_dir, "compare.json"), "w", encoding="utf-8") as f:
    json.dump({n: {"workdir": r["workdir"], "step": r["step"],
                   "summary": {p: v.get("summary", []) for p, v in r["probes"].items()}}
               for n, r in runs.items()}, f, indent=1)
  return written
