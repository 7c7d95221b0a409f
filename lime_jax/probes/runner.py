"""Restores a run's parameters with its saved config, runs probes, writes results, compares runs.

Output of one evaluation: RUN_DIR/eval/<step>/ (RUN_DIR/eval/random_init/ for `--random_init`) with
`results.json` (run info, options and every probe's metrics and summary), one PNG per plot and
`summary.md` (tables and the images). `compare` overlays the same plots of several runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from lime_jax import checkpoint as ckpt_lib
from lime_jax import config as config_lib
from lime_jax.data import pipeline, tasks
from lime_jax.data import text as text_data
from lime_jax.model import ModelConfig, init_params
from lime_jax.probes import plotting
from lime_jax.probes.cells import CellStore, json_ready, same_options
from lime_jax.probes.registry import (
  IncompatibleProbeError,
  ProbeContext,
  ProbeOptions,
  get_probe,
  incompatibility,
  known_probes,
)
from lime_jax.runtime import fileio
from lime_jax.runtime import sharding as shard_lib


class Progress:
  """One console line: overall probe index, the probe's inner steps (lengths, layers), elapsed time.

  On a terminal the line is redrawn in place (`\\r`); on anything else (a SLURM or tmux log file, a
  pipe) every update is its own newline-terminated line, repeated updates dropped.
  """

  def __init__(self, probes: list[str], stream=None, width: int = 24):
    self.probes, self.stream, self.width = probes, stream or sys.stderr, width
    self.index, self.total, self.done, self.name = -1, 1, 0, ""
    self.t0 = time.perf_counter()
    isatty = getattr(self.stream, "isatty", None)
    self.tty = bool(isatty()) if callable(isatty) else False
    self._last = ""  # the last line written without its elapsed time (non-TTY: no repeats)

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
    line = f"[{self.index + 1}/{len(self.probes)} {self.name}] [{bar}] {self.done}/{self.total} "
    if self.tty:
      self.stream.write(f"\r{line}{label:<36.36} {elapsed:6.0f}s")
    elif line + label != self._last:
      self.stream.write(f"{line}{label} {elapsed:.0f}s\n")
    self._last = line + label
    self.stream.flush()

  def finish(self) -> None:
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()


# ---------------------------------------------------------------------------------- configs, meshes
def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A full config: the defaults, overridden by a saved config's values (`config.from_saved`)."""
  return config_lib.from_saved(saved)


def model_config_for(config: ml_collections.ConfigDict) -> ModelConfig:
  return ModelConfig.from_config(config.model, pipeline.vocab_size_for(config))


def eval_mesh(fsdp: int = 1, tensor: int = 1) -> jax.sharding.Mesh:
  """The probes' mesh: parameters sharded over `fsdp` x `tensor` devices by the training rules
  (lime_jax/runtime/sharding.py; 1 x 1: replicated), the remaining devices on the data axis (probe
  batches split over data x fsdp when they divide). On several processes it spans all of them."""
  cfg = ml_collections.ConfigDict({"data": -1, "fsdp": int(fsdp), "tensor": int(tensor)})
  if fsdp < 1 or tensor < 1 or jax.device_count() % (fsdp * tensor):
    raise ValueError(
      f"--mesh_fsdp={fsdp} x --mesh_tensor={tensor} must divide the {jax.device_count()} devices "
      f"({jax.process_count()} processes)."
    )
  return shard_lib.make_mesh(cfg)


def random_init_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Freshly initialised parameters (seed `config.seed`) in `mesh`'s rule shardings (replicated on a
  data-only mesh); `data.seq_len = 0` is fitted to the task first, as a training run would."""
  config_lib.validate(config)
  pipeline.fit_seq_len(config)
  mesh = mesh or eval_mesh()
  init = functools.partial(init_params, model_config_for(config))
  key = jax.random.key(int(config.seed))
  shardings = shard_lib.tree_shardings(mesh, jax.eval_shape(init, key))
  return jax.jit(init, out_shardings=shardings)(key)


def tokenizer_for(config: ml_collections.ConfigDict) -> Any:
  if config.data.task == tasks.TEXT_TASK:
    return text_data.tokenizer_for(config.data)  # data.tokenizer ('' = bytes).
  return tasks.get_task(config.data, int(config.seed)).tokenizer


# --------------------------------------------------------------------------------------------- running
def _incompatible_message(reasons: dict[str, str], ctx: ProbeContext) -> str:
  runnable = [n for n in known_probes() if incompatibility(get_probe(n), ctx) is None and n not in reasons]
  return (
    "; ".join(f"probe {n!r} cannot run on this checkpoint: {r}" for n, r in reasons.items())
    + f". Probes that can run on it (task {ctx.config.data.task!r}, topology "
    f"{ctx.model_cfg.topology!r}): "
    f"{', '.join(runnable) or 'none'}. Drop the probe from --probes, or pass --skip_incompatible to "
    "skip it with a note."
  )


def _skipped(reason: str) -> dict:
  return {"metrics": {"skipped": reason}, "notes": [reason], "seconds": 0.0}


def check_compatible(
  ctx: ProbeContext, probe_names: list[str], skip_incompatible: bool = False
) -> dict[str, str]:
  """{probe: reason} for the named probes that cannot run on ctx's checkpoint; raises
  IncompatibleProbeError naming them, the reasons and the probes that can run, unless skip_incompatible."""
  reasons = {n: r for n in probe_names if (r := incompatibility(get_probe(n), ctx)) is not None}
  if reasons and not skip_incompatible:
    raise IncompatibleProbeError(_incompatible_message(reasons, ctx))
  return reasons


def run_probes(
  params: Any,
  config: ml_collections.ConfigDict,
  probe_names: list[str],
  options: ProbeOptions,
  mesh: jax.sharding.Mesh | None = None,
  stream=None,
  skip_incompatible: bool = False,
  model_cfg: ModelConfig | None = None,
  tokenizer: Any = None,
  pretrained: str = "",
  on_result: Callable[[str, dict], Any] | None = None,
  cell_store: CellStore | None = None,
) -> dict[str, dict]:
  """Runs the named probes; returns {probe: result dict} (see registry.py). `model_cfg` / `tokenizer`
  (default: from `config`) and `pretrained` (the HF folder) come from `probes/pretrained.py`.
  `on_result(name, result)` is called as each probe finishes (the callers write results.json then, so a
  long run that stops keeps the probes it finished); `cell_store` keeps a running probe's finished cells
  (`ProbeContext.cell`), so one that stops resumes at its first unfinished cell.

  A probe that cannot run on the checkpoint (`Probe.compatible`, checked before any probe runs, or a
  `metrics['skipped']` reason it returns) raises IncompatibleProbeError, unless `skip_incompatible`: then
  its result is the reason, as a note.
  """
  probes = [get_probe(n) for n in probe_names]
  mesh = mesh or eval_mesh()
  progress = Progress(probe_names, stream if jax.process_index() == 0 else io.StringIO())
  ctx = ProbeContext(
    params=params,
    model_cfg=model_cfg or model_config_for(config),
    config=config,
    tokenizer=tokenizer if tokenizer is not None else tokenizer_for(config),
    options=options,
    progress=progress,
    batch_sharding=shard_lib.batch_sharding(mesh),
    pretrained=pretrained,
    cells=cell_store,
  )
  reasons = check_compatible(ctx, probe_names, skip_incompatible)
  results = {}
  try:
    for probe in probes:
      progress.next_probe(probe.name)
      if probe.name in reasons:
        results[probe.name] = _skipped(f"{probe.name} probe skipped: {reasons[probe.name]}.")
        if on_result:
          on_result(probe.name, results[probe.name])
        continue
      if cell_store is not None and cell_store.start(probe.name):
        print(f"{probe.name}: resuming after its saved cells", file=stream or sys.stderr)
      t0 = time.perf_counter()
      results[probe.name] = probe.run(ctx)
      results[probe.name]["seconds"] = round(time.perf_counter() - t0, 2)
      metrics = results[probe.name].get("metrics")
      skipped = metrics.get("skipped") if isinstance(metrics, dict) else None
      if skipped and not skip_incompatible:
        raise IncompatibleProbeError(_incompatible_message({probe.name: skipped}, ctx))
      if on_result:
        on_result(probe.name, results[probe.name])
      if cell_store is not None:
        cell_store.finish()
  finally:
    progress.finish()
  return results


def _previous(out_dir: str) -> dict:
  """The results.json already in `out_dir` (probes of earlier invocations), or {}."""
  path = fileio.join(out_dir, "results.json")
  if not fileio.exists(path):
    return {}
  return fileio.read_json(path)


def config_digest(config: ml_collections.ConfigDict) -> str:
  """A short hash of the full config (with the step, it identifies what a saved result was computed on)."""
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def reusable(previous: dict, header: dict) -> dict[str, dict]:
  """The probe results of an earlier results.json (`previous`) computed on the same checkpoint step and
  config with the same options as `header`'s; results saved without their options never match."""
  if any(previous.get(k) != header[k] for k in ("step", "config_digest")):
    return {}
  options = json_ready(header["options"])
  return {k: v for k, v in previous.get("probes", {}).items() if same_options(v.get("options"), options)}


def _keep_replaced(out_dir: str, previous: dict, dropped: list[str]) -> None:
  """Saves the previous results.json as results.<its creation time>.json before results that do not
  apply to this evaluation (other step, config or options) leave it, and says so."""
  stamp = str(previous.get("created", "earlier")).replace(":", "")
  path = fileio.join(out_dir, f"results.{stamp}.json")
  fileio.write_text(path, json.dumps(previous, indent=1, allow_nan=False))
  print(
    f"{out_dir}: {', '.join(dropped)} of an earlier evaluation (other step, config or options) moved to "
    f"{fileio.basename(path)}",
    file=sys.stderr,
  )


def write_outputs(out_dir: str, header: dict, results: dict[str, dict]) -> dict:
  """results.json, one PNG per plot, summary.md; returns the results.json content.

  Each probe's result records the options it was computed with. Probes evaluated earlier into the same
  directory are kept (unless re-run) only when `reusable`, i.e. computed on the same step and config with
  the same options, so separate invocations (`--probes=collapse`, later `--probes=entropy`) accumulate
  in one results.json, and results of other options never mix in.
  """
  lead = jax.process_index() == 0
  if lead:
    fileio.makedirs(out_dir)
  previous = _previous(out_dir)
  images: dict[str, list[str]] = {}
  for name, result in results.items():
    specs = result.get("plots", []) if lead else []
    images[name] = [fileio.basename(plotting.render(spec, out_dir)) for spec in specs]
  kept = {k: v for k, v in reusable(previous, header).items() if k not in results}
  dropped = [k for k in previous.get("probes", {}) if k not in kept and k not in results]
  if dropped and lead:
    _keep_replaced(out_dir, previous, dropped)
  results = {**kept, **{k: {**v, "options": header["options"]} for k, v in results.items()}}
  images = {**{k: previous.get("images", {}).get(k, []) for k in kept}, **images}
  content = json_ready({**header, "probes": results, "images": images})
  if jax.process_index() > 0:  # process 0 writes (every process holds the same results)
    return content
  fileio.write_text(fileio.join(out_dir, "results.json"), json.dumps(content, indent=1, allow_nan=False))
  lines = [
    f"# Evaluation of `{header['workdir']}` at step {header['step']}",
    "",
    f"{header['created']} · {header['devices']} · probes: {', '.join(results)}",
    "",
  ]
  for name, result in results.items():
    lines += [f"## {name} ({result.get('seconds', 0):.1f} s)", ""]
    lines += [f"- {n}" for n in result.get("notes", [])] + ([""] if result.get("notes") else [])
    if result.get("summary"):
      lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result["summary"]]
    lines += [""] + [f"![{img}]({img})" for img in images[name]] + [""]
  fileio.write_text(fileio.join(out_dir, "summary.md"), "\n".join(lines))
  return content


def pending(out_dir: str, header: dict, probe_names: list[str], stream=None) -> list[str]:
  """The probes of `probe_names` not yet saved in out_dir's results.json with `header`'s step, config
  and options (`reusable`; a saved 'skipped' result does not count), saying which are reused."""
  saved = {
    k
    for k, v in reusable(_previous(out_dir), header).items()
    if not (isinstance(v.get("metrics"), dict) and v["metrics"].get("skipped"))
  }
  if jax.process_count() > 1:  # every process decides from the same file before process 0 rewrites it
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices("lime_jax.probes.runner.pending")
  if saved & set(probe_names) and jax.process_index() == 0:
    print(
      f"{out_dir}: reusing the saved {', '.join(n for n in probe_names if n in saved)} (same step, "
      "config and options)",
      file=stream or sys.stderr,
    )
  return [n for n in probe_names if n not in saved]


def writer(out_dir: str, header: dict) -> Callable[[str, dict], dict]:
  """`run_probes`' `on_result`: adds one probe's result to out_dir's results.json, plots and summary."""
  return lambda name, result: write_outputs(out_dir, header, {name: result})


def _header(workdir: str, step: Any, config: ml_collections.ConfigDict, options: ProbeOptions) -> dict:
  return {
    "workdir": fileio.absolute(workdir),
    "step": step,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    "model": {
      k: config.model[k] for k in ("num_layers", "d_model", "num_heads", "topology", "compute_dtype")
    },
    "task": config.data.task,
    "config_digest": config_digest(config),
    "options": json_ready(dataclasses.asdict(options)),
  }


def evaluate(
  workdir: str,
  probe_names: list[str],
  options: ProbeOptions | None = None,
  step: int | None = None,
  random_init_config: ml_collections.ConfigDict | None = None,
  stream=None,
  skip_incompatible: bool = False,
  reuse: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[str, dict]:
  """Evaluates one run (or a random-init model of `random_init_config`); returns (out_dir, results).

  `reuse`: probes whose result is already saved in out_dir with the same step, config and options
  (`reusable`) are not run again (`--compare` does this); `skip_incompatible`: see `run_probes`;
  `mesh`: where the parameters go, sharded by the rules (default `eval_mesh()`: replicated).
  """
  options = options or ProbeOptions()
  for name in probe_names:
    get_probe(name)  # unknown names fail before anything is restored
  mesh = mesh or eval_mesh()
  if random_init_config is not None:
    config, params, label = random_init_config, random_init_params(random_init_config, mesh), "random_init"
    fileio.makedirs(workdir)
  else:
    restored = ckpt_lib.restore_params(workdir, step, mesh)
    config, params, label = config_from_dict(restored.config), restored.params, str(restored.step)
  out_dir = fileio.join(workdir, "eval", label)
  header = _header(workdir, label, config, options)
  return out_dir, run_into(
    out_dir, header, params, config, probe_names, options, mesh, stream, skip_incompatible, reuse
  )


def run_into(
  out_dir: str,
  header: dict,
  params: Any,
  config: ml_collections.ConfigDict,
  probe_names: list[str],
  options: ProbeOptions,
  mesh: jax.sharding.Mesh | None = None,
  stream=None,
  skip_incompatible: bool = False,
  reuse: bool = False,
  **context: Any,
) -> dict:
  """`run_probes` into out_dir (results.json, plots and summary.md written as each probe finishes, under
  `header`); returns results.json's content. `reuse`: the probes already saved there with the same
  header (`pending`) are not run again, and a probe an earlier run left unfinished resumes after its
  saved cells (`cells.CellStore`). `context`: `run_probes`' model_cfg / tokenizer / pretrained."""
  todo = pending(out_dir, header, probe_names, stream) if reuse else probe_names
  if todo:
    run_probes(
      params,
      config,
      todo,
      options,
      mesh,
      stream,
      skip_incompatible,
      on_result=writer(out_dir, header),
      cell_store=CellStore(out_dir, header) if reuse else None,
      **context,
    )
  return write_outputs(out_dir, header, {})


def compare(runs: dict[str, dict], out_dir: str, probe_names: list[str] | None = None) -> list[str]:
  """Overlays each plot that several runs share and writes one table (compare.md, compare.json); only
  the probes in `probe_names` when given (a results.json may hold others)."""
  if probe_names is not None:
    runs = {
      n: {**r, "probes": {p: v for p, v in r["probes"].items() if p in probe_names}} for n, r in runs.items()
    }
  fileio.makedirs(out_dir)
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
        lines.append(f"![{spec_name}]({fileio.basename(path)})")
    lines.append("")
  fileio.write_text(fileio.join(out_dir, "compare.md"), "\n".join(lines))
  fileio.write_text(
    fileio.join(out_dir, "compare.json"),
    json.dumps(
      {
        n: {
          "workdir": r["workdir"],
          "step": r["step"],
          "summary": {p: v.get("summary", []) for p, v in r["probes"].items()},
        }
        for n, r in runs.items()
      },
      indent=1,
    ),
  )
  return written
