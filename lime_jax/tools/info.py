"""Size, FLOPs and memory of a config without training (nothing is allocated, no data is read).

  python -m lime_jax.tools.info --config=experiments/lime_deep.py:paper64,lime \
      [--config.model.num_layers=32 ...] [--nocompile] [--json]

Prints the parameter count, training FLOPs per token and per step (lime_jax/model/flops.py's convention),
the bytes of the parameters and of the optimizer state, and XLA's memory analysis of the train step,
compiled ahead of time on abstract inputs for this machine's devices (`--nocompile` skips it).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from lime_jax.data import pipeline
from lime_jax.model import flops as flops_lib
from lime_jax.model import init_params
from lime_jax.runtime import cli
from lime_jax.train import loop as train_lib
from lime_jax.train import step as step_lib


def abstract_state(run: train_lib.Run) -> step_lib.TrainState:
  """The train state as ShapeDtypeStructs carrying their shardings (no arrays)."""

  def init(rng):
    return step_lib.init_train_state(init_params(run.model_cfg, rng), run.optimizer)

  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, run.state_sharding
  )


def abstract_batch(run: train_lib.Run) -> dict[str, jax.ShapeDtypeStruct]:
  """A global train batch as ShapeDtypeStructs: int32 tokens, float32 masks, [batch, seq_len]."""
  shape = (int(run.config.train.batch_size), int(run.config.data.seq_len))
  dtype = lambda k: jnp.int32 if k in ("inputs", "targets") else jnp.float32
  return {
    k: jax.ShapeDtypeStruct(shape, dtype(k), sharding=run.batch_sharding) for k in pipeline.FEATURE_KEYS
  }


def tree_bytes(tree: Any) -> int:
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def build_without_data(config: ml_collections.ConfigDict) -> tuple[train_lib.Run, str]:
  """`train.build(config)`, and '' ; or, for a text config whose data (shards, tokenizer file) is not on
  this machine but whose model.vocab_size is set, the build with a synthetic task at the same seq_len
  (nothing about the model changes) and the data error it got past."""
  try:
    return train_lib.build(config), ""
  except ValueError as e:
    if not (str(e).startswith("config.data") and config.data.task == "text" and config.model.vocab_size):
      raise
    stand_in = copy.deepcopy(config)
    stand_in.data.task = "arithmetic"
    return train_lib.build(stand_in), str(e)


def config_info(config: ml_collections.ConfigDict, compile_step: bool = True) -> dict[str, Any]:
  """Parameter count, FLOPs per token / step, state bytes and (compile_step) XLA's memory analysis of
  the compiled train step on this machine's devices."""
  run, data_error = build_without_data(config)
  state = abstract_state(run)
  batch, seq_len = int(config.train.batch_size), int(config.data.seq_len)
  forward = flops_lib.forward_flops_per_token(run.model_cfg, seq_len)
  info: dict[str, Any] = {
    "params": train_lib.param_count(state.params),
    "model": {
      "num_layers": run.model_cfg.num_layers,
      "d_model": run.model_cfg.d_model,
      "topology": run.model_cfg.topology,
      "vocab_size": run.model_cfg.vocab_size,
    },
    "batch_size": batch,
    "seq_len": seq_len,
    "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    "mesh": {k: int(v) for k, v in run.mesh.shape.items()},
    "flops_per_token_forward": forward,
    "flops_per_token_train": 3.0 * forward,
    "flops_per_step_train": flops_lib.train_flops_per_step(run.model_cfg, batch, seq_len),
    "topology_extra_flops_per_token_forward": flops_lib.topology_extra_forward_flops(run.model_cfg),
    "params_mib": tree_bytes(state.params) / 2**20,
    "optimizer_state_mib": tree_bytes(state.opt_state) / 2**20,
  }
  if data_error:
    info["data_not_checked"] = data_error
  if compile_step:
    compiled = train_lib.jit_train_step(run).lower(state, abstract_batch(run)).compile()
    report = train_lib.compile_report(compiled, run, state.params)
    info.update({k: v for k, v in report.items() if k.startswith(("memory/", "xla_"))})
  return info


def format_info(info: dict[str, Any]) -> str:
  m = info["model"]
  lines = [
    f"Model: {info['params']:,} params | {m['num_layers']} layers, d_model {m['d_model']}, topology "
    f"{m['topology']}, vocab {m['vocab_size']}",
    f"Batch {info['batch_size']} x seq_len {info['seq_len']} | {info['devices']}, mesh {info['mesh']}",
    f"FLOPs/token: {info['flops_per_token_forward']:.4g} forward, "
    f"{info['flops_per_token_train']:.4g} train "
    f"(3x forward; topology extra {info['topology_extra_flops_per_token_forward']:.4g} forward)",
    f"FLOPs/step (train): {info['flops_per_step_train']:.4e}",
    f"State: params {info['params_mib']:.1f} MiB + optimizer {info['optimizer_state_mib']:.1f} MiB "
    f"(totals over all devices)",
  ]
  if info.get("data_not_checked"):
    lines.append(f"Data not checked (the model's vocab_size is used): {info['data_not_checked']}")
  memory = {k.split("/")[1]: v for k, v in info.items() if k.startswith("memory/")}
  if memory:
    lines.append(
      "XLA memory_analysis of the compiled train step, per device: "
      + ", ".join(f"{k}={v:.1f} MiB" for k, v in memory.items())
    )
    if "argument_size_mib" in memory and "temp_size_mib" in memory:
      lines.append(
        f"Estimated peak per device (arguments + temp): "
        f"{memory['argument_size_mib'] + memory['temp_size_mib']:.1f} MiB"
      )
  return "\n".join(lines)


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing this module defines none."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].", lock_config=True)
  flags.DEFINE_bool("compile", True, "Compile the train step for XLA's memory analysis.")
  flags.DEFINE_bool("json", False, "Print JSON instead of text.")
  flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  FLAGS = flags.FLAGS
  try:
    info = config_info(FLAGS.config, FLAGS.compile)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps(info, indent=1) if FLAGS.json else format_info(info))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
