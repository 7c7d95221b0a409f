"""The training loop: build, restore, compile ahead of time, train with async dispatch, evaluate.

Importable and notebook-friendly: `train(config, workdir)` does everything `python -m lime_jax.main`
does and returns a `TrainResult` (the final train state and the final metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lime_jax import checkpoint as ckpt_lib
from lime_jax import config as config_lib
from lime_jax.data import pipeline
from lime_jax.evals import greedy_answers
from lime_jax.losses import token_metrics
from lime_jax.model import ModelConfig, Transformer, init_params
from lime_jax.model import flops as flops_lib
from lime_jax.runtime import caches, peak_flops, workdir_lock
from lime_jax.runtime import sharding as shard_lib
from lime_jax.runtime.errors import UserError
from lime_jax.train import init_from, timing, writers
from lime_jax.train import optimizer as opt_lib
from lime_jax.train import step as step_lib


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


def non_finite_message(
  step: int,
  values: dict[str, float],
  last_good: int | None,
  start_step: int,
  directory: str,
  config: ml_collections.ConfigDict,
) -> str:
  """What a NaN/Inf loss at `step` means: the real last good checkpoint (or none) and the likely causes,
  most likely first."""
  kept = (
    f"The last good checkpoint is step {last_good} in {directory}; rerunning resumes from it."
    if last_good is not None
    else f"No checkpoint was written yet ({directory} has none from this run); rerunning starts at step 0."
  )
  causes = [
    "the learning rate is too high for this model: lower train.learning_rate, raise "
    "train.warmup_steps or set train.grad_clip (e.g. 1.0)",
  ]
  if config.model.compute_dtype != "float32":
    causes.append(f"model.compute_dtype={config.model.compute_dtype!r} overflowed: try 'float32'")
  if config.data.task == "text":
    causes.append("a batch holds unusual text (e.g. very long repeats): check the shards the run reads")
  if last_good is not None and step == start_step + 1 and start_step == last_good:
    causes.insert(
      0,
      f"step {start_step}, just restored, holds bad values: evaluate it (python -m lime_jax.evaluate "
      f"--workdir=... --step={start_step}) or move {directory}/{start_step} aside to resume from an "
      "older step",
    )
  listed = "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1))
  return (
    f"Non-finite loss/grad at step {step} (loss={values['loss']}, grad_norm={values['grad_norm']}). {kept} "
    f"Likely causes, most likely first: {listed}."
  )


@dataclasses.dataclass
class Run:
  """Everything built from a config before the loop starts."""

  config: ml_collections.ConfigDict
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  model: Transformer
  optimizer: Any
  state_sharding: Any
  batch_sharding: Any
  data: pipeline.TaskData | None = None  # the task and tokenizer built when the config was resolved


def resolve(config: ml_collections.ConfigDict) -> pipeline.TaskData:
  """Resolves `config` in place, once, before it is validated: with `model.init_from`, data.tokenizer and
  the architecture fields come from the source, read once (lime_jax/train/init_from.py); the task and its
  tokenizer are built once (a bad task setting fails here, named by the task); `data.seq_len = 0` is
  fitted to the task's longest example (the saved config.json holds the fitted value). Returns the built
  task: its tokenizer sizes the model's vocabulary and the iterators reuse it."""
  source = init_from.read_source(str(config.model.init_from)) if config.model.init_from else None
  if source is not None:
    init_from.set_tokenizer(config, source)  # the task is then built with the source's tokenizer
  data = pipeline.resolve(config)
  if source is not None:
    init_from.apply_fields(config, source, data.vocab_size)
  return data


def build(config: ml_collections.ConfigDict, devices: list | None = None) -> Run:
  """Resolves the config (`resolve`), validates the resolved config once, then builds model, optimizer,
  mesh (over `devices`, default all) and shardings (no arrays allocated)."""
  data = resolve(config)
  config_lib.validate(config)
  model_cfg = ModelConfig.from_config(config.model, data.vocab_size)
  mesh = shard_lib.make_mesh(config.mesh, devices)
  shard_lib.check_batch_divisible(config.train.batch_size, mesh)
  shard_lib.check_batch_divisible(config.eval.batch_size, mesh, "eval.batch_size")
  shard_lib.check_process_rows(shard_lib.batch_sharding(mesh), config.train.batch_size)
  model = Transformer(model_cfg)
  abstract_params = jax.eval_shape(functools.partial(init_params, model_cfg), jax.random.key(0))
  optimizer = opt_lib.make_optimizer(config.train, abstract_params)
  abstract_state = jax.eval_shape(
    functools.partial(step_lib.init_train_state, optimizer=optimizer), abstract_params
  )
  return Run(
    config,
    model_cfg,
    mesh,
    model,
    optimizer,
    shard_lib.state_shardings(mesh, abstract_state),
    shard_lib.batch_sharding(mesh),
    data,
  )


# XLA's CPU backend spends seconds optimising the one-off init program (loops of random bits over the
# stacked layers) that runs in milliseconds. Unoptimised it compiles several times faster and draws the
# same values up to float rounding; it runs slower, so only for models up to this size.
_FAST_INIT_COMPILE = {"xla_backend_optimization_level": 0}
_FAST_INIT_MAX_PARAMS = 8_000_000


def create_state(run: Run) -> step_lib.TrainState:
  """Initialises parameters and optimizer state directly in their shardings (on CPU, a small model's
  init program is compiled without LLVM optimisations: see _FAST_INIT_COMPILE)."""

  def init(rng):
    return step_lib.init_train_state(init_params(run.model_cfg, rng), run.optimizer)

  key = jax.random.key(run.config.seed)
  if (
    run.mesh.devices.flat[0].platform == "cpu"
    and param_count(jax.eval_shape(functools.partial(init_params, run.model_cfg), key))
    <= _FAST_INIT_MAX_PARAMS
  ):
    try:
      return jax.jit(init, out_shardings=run.state_sharding, compiler_options=_FAST_INIT_COMPILE)(key)
    except Exception:  # an XLA without this option: the default compile below.
      pass
  return jax.jit(init, out_shardings=run.state_sharding)(key)


def jit_train_step(run: Run):
  """`train_step(state, batch) -> (state, metrics)` jitted with the state's rule shardings in and out,
  the batch over data x fsdp, replicated metrics, and the input state donated."""
  step = step_lib.make_train_step(run.model, run.optimizer, opt_lib.lr_schedule(run.config.train))
  return jax.jit(
    shard_lib.with_activation_mesh(step, run.mesh),
    in_shardings=(run.state_sharding, run.batch_sharding),
    out_shardings=(run.state_sharding, shard_lib.replicated(run.mesh)),
    donate_argnums=(0,),
  )


def jit_eval_step(run: Run):
  """`eval_step(params, batch) -> sums`, jitted like the train step (replicated sums)."""
  return jax.jit(
    shard_lib.with_activation_mesh(step_lib.make_eval_step(run.model), run.mesh),
    in_shardings=(run.state_sharding.params, run.batch_sharding),
    out_shardings=shard_lib.replicated(run.mesh),
  )


def _abstract_state(run: Run) -> Any:
  abstract_params = jax.eval_shape(functools.partial(init_params, run.model_cfg), jax.random.key(0))
  return jax.eval_shape(
    functools.partial(step_lib.init_train_state, optimizer=run.optimizer), abstract_params
  )


def state_bytes(run: Run) -> dict[str, int]:
  """Bytes per device of the parameters and of the whole train state (parameters and optimizer moments),
  from abstract shapes and the rule shardings on `run.mesh`."""
  abstract = _abstract_state(run)
  sizes = dict(run.mesh.shape)
  return {
    "params": shard_lib.bytes_per_device(abstract.params, sizes)[0],
    "state": shard_lib.bytes_per_device(abstract, sizes)[0],
  }


def memory_line(run: Run) -> str:
  """'Memory per device: parameters X, train state Y ... | mesh data=.. fsdp=.. tensor=..'."""
  b = state_bytes(run)
  return (
    f"Memory per device: parameters {shard_lib.gib(b['params'])}, train state (with optimizer moments) "
    f"{shard_lib.gib(b['state'])}, before activations | mesh {shard_lib.describe_mesh(run.mesh)}"
  )


def check_memory(run: Run, device_bytes: int | None = None) -> None:
  """Refuses (DoesNotFitError naming the figure and the fsdp size that would hold it) a train state a
  device cannot hold, before anything is allocated or read; `device_bytes` None: the device's own figure
  (`sharding.device_memory_bytes`; none on CPU: no check)."""
  limit = device_bytes if device_bytes is not None else shard_lib.device_memory_bytes()
  shard_lib.check_fits(
    _abstract_state(run), run.mesh, limit, "The train state (parameters and optimizer moments)"
  )


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _cost_flops(compiled: Any) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is best effort and backend dependent.
    return None


def compile_report(compiled: Any, run: Run, params: Any) -> dict[str, float]:
  """Parameter count, FLOPs per step and XLA's memory analysis of the compiled train step."""
  cfg, t = run.config, run.config.train
  report = {
    "params": param_count(params),
    "flops_per_step_analytic": flops_lib.train_flops_per_step(run.model_cfg, t.batch_size, cfg.data.seq_len),
  }
  xla_flops = _cost_flops(compiled)
  if xla_flops:  # XLA counts a while loop's body once, so this covers one layer of the scan.
    report["xla_cost_analysis_flops_one_scan_iteration"] = xla_flops
  mem = compiled.memory_analysis()
  if mem is not None:
    for name in (
      "temp_size_in_bytes",
      "argument_size_in_bytes",
      "output_size_in_bytes",
      "generated_code_size_in_bytes",
    ):
      if hasattr(mem, name):
        report[f"memory/{name.replace('_in_bytes', '')}_mib"] = getattr(mem, name) / 2**20
  return report


def evaluate(run: Run, params: Any, eval_step, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Held-out CE, token accuracy and exact match of the answers (see token_metrics.answer_metrics)."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = eval_step(params, shard_lib.to_global_batch(shard_lib.process_slice(batch), run.batch_sharding))
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  result = {
    "ce": totals["ce_sum"] / max(totals["ce_tokens"], 1.0),
    "token_accuracy": totals["correct_tokens"] / max(totals["answer_tokens"], 1.0),
    "exact_match": totals["exact_matches"] / max(totals["examples"], 1.0),
    "examples": totals["examples"],
  }
  if batches and "num_bytes" in batches[0]:  # task 'text': perplexity, bits per byte.
    result.update(
      token_metrics.lm_metrics(
        totals["ce_sum"], totals["ce_tokens"], sum(float(b["num_bytes"].sum()) for b in batches)
      )
    )
  if run.config.eval.greedy and jax.process_count() == 1:  # greedy decoding, per-position accuracy,
    # layer entropy; it decodes process-local batches, so multi-process runs skip it (teacher-forced EM
    # above equals greedy EM; see token_metrics.answer_metrics).
    result.update(greedy_answers.evaluate_generation(run.model_cfg, params, batches))
  return result


class _StopFlag:
  """Set by SIGTERM: the loop checkpoints the current step and returns.

  One process: a Python SIGTERM handler. Several processes: they must stop at the same step, so
  SIGTERM is left to jax's preemption service (`jax.distributed.initialize` installs it; on Cloud TPU it
  also gets the maintenance-event notice), and `reached(step)` polls its agreed sync step, which is the
  largest step any process had reached when the notice arrived, plus one.
  """

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signal = signal.SIGTERM
    return self.signal is not None

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
      return
    for sig in (signal.SIGTERM,):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal = signum

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: `metrics` (the content of final_metrics.json: status, step, train, eval),
  the final `state` (parameters, optimizer state, step; sharded on `run.mesh`) and the built `run`."""

  metrics: dict[str, Any]
  state: step_lib.TrainState
  run: Run


def _is_finite(values: dict[str, float]) -> bool:
  return all(np.isfinite(values[k]) for k in ("loss", "grad_norm"))


def save_config(workdir: str, config: ml_collections.ConfigDict, start_step: int) -> None:
  """config.json (this run's config) and config.<start_step>.json (the config of the segment that trains
  from `start_step`), so resuming with other values keeps the record of every segment. A config.json
  written before these records existed is kept as config.before-<start_step>.json when it differs."""
  text = config.to_json_best_effort(indent=2)
  root = epath.Path(workdir)
  old = root / "config.json"
  if old.exists() and not list(root.glob("config.[0-9]*.json")) and old.read_text() != text:
    writers.write_text(workdir, f"config.before-{start_step}.json", old.read_text())
  writers.write_text(workdir, f"config.{start_step}.json", text)
  writers.write_text(workdir, "config.json", text)


def train(
  config: ml_collections.ConfigDict, workdir: str, startup: dict[str, float] | None = None
) -> TrainResult:
  """Trains per `config`, checkpointing into `workdir`; resumes from its latest checkpoint. Returns the
  final state and metrics (`TrainResult`). `startup`: phases timed before the call (e.g. `imports_s`),
  reported with the others in compile_report.json. The workdir is locked for the run
  (runtime/workdir_lock.py): a second run on it fails at once with WorkdirLockedError."""
  phases = timing.Phases(startup)
  with phases("build"):
    run = build(config)
  writers.make_dirs(workdir)  # a local path or a gs:// URL
  say = print if jax.process_index() == 0 else (lambda line: None)
  with workdir_lock.held(workdir, log=say):
    return _train(run, workdir, phases)


def _train(run: Run, workdir: str, phases: timing.Phases) -> TrainResult:
  """`train` once the run is built and the workdir locked."""
  config = run.config
  t = config.train
  cache_dir = caches.setup_compilation_cache(t.compilation_cache_dir)  # before the first compile
  is_lead = jax.process_index() == 0
  writer = writers.MetricWriter(workdir, t.num_steps, enabled=is_lead)
  writer.add_sink(writers.make_wandb_sink(config, workdir, is_lead))  # None unless train.wandb.project
  checkpointer = ckpt_lib.Checkpointer(workdir, t.keep_checkpoints, t.async_checkpoint)
  signature = ckpt_lib.arch_signature(config.model, run.model_cfg.vocab_size)

  writer.text(memory_line(run))
  check_memory(run)
  data_iter = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count(), run.data)
  with phases("init"), caches.count_cache_events() as init_cache:
    state = jax.block_until_ready(create_state(run))
  # The newest intact checkpoint: a config mismatch raises; damaged newer steps are moved aside.
  with phases("restore"):
    found = checkpointer.restore_latest_intact(
      ckpt_lib.abstract_like(state), data_iter, signature, log=writer.text
    )
  latest = found.step
  if latest is not None:
    state = found.value
    writer.text(f"Resumed from {checkpointer.directory}/{latest}.")
    changes = config_lib.config_changes(
      checkpointer.read_meta(latest).get("config", {}), json.loads(config.to_json_best_effort())
    )
    if changes:
      writer.text(
        f"The config differs from the one saved with step {latest} ({len(changes)} fields: "
        + "; ".join(changes[:8])
        + ("; ..." if len(changes) > 8 else "")
        + f"); config.{latest}.json records the new one, earlier config.<step>.json files the old."
      )
  elif found.moved:
    data_iter = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count(), run.data)
    writer.text(
      f"No intact checkpoint left in {checkpointer.directory} (damaged ones moved aside); "
      "starting from step 0."
    )
  if latest is None and config.model.init_from:  # fine-tuning: the source's parameters, fresh optimizer
    params, fresh = init_from.initial_params(config, run.model_cfg, state.params)
    state = state.replace(params=params)
    writer.text(
      f"Initialised from {init_from.describe(config.model.init_from)}"
      + (f"; freshly initialised: {', '.join(fresh)}" if fresh else "")
      + "."
    )
  start_step = int(jax.device_get(state.step))
  # Drops metrics records of steps after the restored one (replayed now); a finished run started again
  # only evaluates its final step again, so that step's eval record is dropped too (one per step).
  writer.start_at(start_step, redo_final_eval=start_step >= t.num_steps)
  if is_lead:
    save_config(workdir, config, start_step)

  train_step = jit_train_step(run)
  eval_step = jit_eval_step(run)
  eval_batches = pipeline.make_eval_batches(config, data=run.data)

  # Ahead-of-time compile: report size, FLOPs and memory before step 1.
  first_local = next(data_iter)
  first_batch = shard_lib.to_global_batch(first_local, run.batch_sharding)
  with phases("compile"), caches.count_cache_events() as compile_cache:
    compiled = train_step.lower(state, first_batch).compile()
  report = compile_report(compiled, run, state.params)
  report["compile_s"] = phases.seconds["compile_s"]
  with phases("peak"):
    peak, peak_source = peak_flops.peak_flops_per_device()
  report["peak_flops_per_device"] = peak
  # Start-up phases in seconds (first_step_s, dispatch to metrics of the first step, is added after it).
  report["phases"] = phases.seconds
  report["compilation_cache"] = {
    "dir": cache_dir or "none",
    "hits": init_cache["hits"] + compile_cache["hits"],
    "writes": init_cache["writes"] + compile_cache["writes"],
  }
  writer.text(
    f"Model: {report['params']:,} params | {run.model_cfg.num_layers} layers, d_model "
    f"{run.model_cfg.d_model}, topology {run.model_cfg.topology} | mesh {dict(run.mesh.shape)}\n"
    f"FLOPs/step: {report['flops_per_step_analytic']:.3e} analytic (3x forward, causal-halved attention)"
    + "\nMemory: "
    + ", ".join(f"{k.split('/')[1]}={v:.1f} MiB" for k, v in report.items() if k.startswith("memory/"))
    + f"\nCompiled in {report['compile_s']:.1f}s; MFU peak {peak:.3e} FLOP/s per device, {peak_source}."
    + "\nStart-up: "
    + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in phases.seconds.items())
    + f" | compilation cache {report['compilation_cache']['dir']}: "
    + f"{report['compilation_cache']['hits']} hits, {report['compilation_cache']['writes']} writes"
  )
  if is_lead:
    writers.write_text(workdir, "compile_report.json", json.dumps(report, indent=2))

  tokens_per_step = t.batch_size * config.data.seq_len
  peak_total = peak * jax.device_count()
  stop = _StopFlag()
  stop.install()
  pending: tuple[int, Any] | None = None
  step_timer = timing.StepTimer(start_step)  # tokens/s and MFU leave out checkpoint and eval time
  loop_start = time.perf_counter()
  last_values: dict[str, float] = {}
  last_good = latest
  status = "completed"

  def meta(step: int) -> dict:
    return {"step": step, "arch": signature, "config": json.loads(config.to_json_best_effort())}

  def finish(step_and_metrics) -> dict[str, float]:
    """Fetches a dispatched step's metrics; stops the run on a non-finite loss."""
    nonlocal last_values
    step, device_metrics = step_and_metrics
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not _is_finite(values):
      raise NonFiniteLossError(
        non_finite_message(step, values, last_good, start_step, checkpointer.directory, config)
      )
    last_values = values
    if "first_step_s" not in phases.seconds:
      phases.seconds["first_step_s"] = time.perf_counter() - loop_start
      if is_lead:
        writers.write_text(workdir, "compile_report.json", json.dumps(report, indent=2))
    if step % t.log_every == 0 or step == t.num_steps:
      now = time.perf_counter()
      rate = step_timer.steps_per_s(step)
      values["tokens_per_s"] = rate * tokens_per_step
      values["mfu_pct"] = (
        100.0
        * rate
        * flops_lib.train_flops_per_step(run.model_cfg, t.batch_size, config.data.seq_len)
        / peak_total
      )
      with step_timer.excluded():  # writing metrics (TensorBoard, JSONL) is not training time either
        writer.write(step, values)
        writer.progress(step, values, now - loop_start, step - start_step)
    return values

  try:
    step = start_step
    batch = first_batch
    while step < t.num_steps:
      state, device_metrics = compiled(state, batch)  # dispatched asynchronously
      step += 1
      if pending is not None:
        finish(pending)  # step t-1's metrics, while step t runs
      pending = (step, device_metrics)
      stop_here = stop.reached(step) or step == t.stop_at_step
      if step % t.checkpoint_every == 0 or step == t.num_steps or stop_here:
        finish(pending)  # a checkpoint only holds a state whose loss was finite
        pending = None
        # The iterator has yielded exactly `step` batches here, so a resume continues bit-identically.
        with step_timer.excluded():
          checkpointer.save(step, state, data_iter, meta(step), force=True)
        last_good = step
      if step < t.num_steps and not stop_here:
        batch = shard_lib.to_global_batch(next(data_iter), run.batch_sharding)
      if t.eval_every and step % t.eval_every == 0 and step < t.num_steps:
        jax.block_until_ready(state)  # the step still running counts as training time, the eval does not
        with step_timer.excluded():
          writer.write(step, evaluate(run, state.params, eval_step, eval_batches), prefix="eval")
      if stop_here:
        status = "preempted" if stop.signal is not None else "stopped"
        reason = f"Signal {stop.signal}" if stop.signal is not None else "train.stop_at_step"
        writer.text(
          f"{reason}: checkpointed step {step} in {checkpointer.directory}; rerun the same command to resume."
        )
        break
    if pending is not None:
      finish(pending)
  finally:
    stop.uninstall()
    checkpointer.close()

  if not last_values and start_step >= t.num_steps:  # no step ran: the final step's logged metrics
    last_values = writer.logged(t.num_steps)
  result: dict[str, Any] = {"status": status, "step": int(jax.device_get(state.step)), "train": last_values}
  if status == "completed":
    result["eval"] = writer.write(
      t.num_steps, evaluate(run, state.params, eval_step, eval_batches), prefix="eval"
    )
    writer.text(
      "Held-out ({examples:.0f} examples): exact_match={exact_match:.4f} "
      "token_accuracy={token_accuracy:.4f} ce={ce:.4f}".format(**result["eval"])
    )
  if is_lead:
    writers.write_text(workdir, "final_metrics.json", json.dumps(result, indent=2))
  writer.close()
  return TrainResult(metrics=result, state=state, run=run)
