"""The probe registry, the context every probe receives, and the shape of a probe's result.

A probe is `Probe(name, run, description)` with `run(ctx: ProbeContext) -> dict`. The returned dict is
JSON-ready and has up to four keys, which `runner.py` turns into files:
  metrics  any JSON data (written to results.json under the probe's name);
  plots    a list of plot specs (`plotting.py`): one PNG each, overlaid across runs by `--compare`;
  summary  a list of [name, value] rows for summary.md and the comparison table;
  notes    short strings (skips, substitutions) shown in summary.md.
Adding a probe: write `lime_jax/probes/<name>.py` with a `run(ctx)` and, at its end,
`PROBE = Probe('<name>', run, '<one line>', compatible)`, and add the module's name to `BUILTIN_MODULES`
(the one list of probes). `compatible(ctx) -> str | None` says why the probe cannot run on a checkpoint
(e.g. its tokenizer cannot encode the prompts); the runner then fails before running anything, unless
`--skip_incompatible`. A probe that finds out only while running returns `metrics['skipped']` = reason.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import ml_collections

  from lime_jax.model import ModelConfig

# The probes: modules of lime_jax/probes/ that each define `PROBE` (imported on first use, so that
# importing one pure helper, e.g. `lime_jax.probes.entropy.matrix_entropy`, does not import the model).
BUILTIN_MODULES = ("copying", "counting", "collapse", "oversquash", "entropy", "separability", "router", "lm")


@dataclasses.dataclass
class ProbeOptions:
  """User settings of the probes (flags of `lime_jax.evaluate`)."""

  lengths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  # copying / counting length grid.
  num_examples: int = 32  # examples per length (copying, counting) or sequences (entropy, separability).
  collapse_ns: tuple[int, ...] = (1, 2, 6, 11, 51, 101, 501, 1001, 2001)
  collapse_dtypes: tuple[str, ...] = ("float32", "bfloat16")
  collapse_samples: int = 4  # random prompts per n for the uniformly-sampled-digits family.
  oversquash_length: int = 32  # prompt length of the sensitivity probe.
  oversquash_prompts: int = 4
  oversquash_method: str = "auto"  # 'auto' | 'exact' | 'hutchinson'.
  hutchinson_samples: int = 64
  entropy_alphas: tuple[float, ...] = (0.5, 0.99, 1.0)
  separability_tokens: tuple[str, ...] = ()  # () = is,are,was,were for text, else the first digits.
  text_file: str = ""  # pretrained models: .txt read by entropy / separability ('' = built-in sentences).
  chat_template: bool = False  # copying / counting (--hf): ask each question as a chat user message.
  seed: int = 0


@dataclasses.dataclass
class ProbeContext:
  """What a probe may use: parameters (already on the devices), configs, tokenizer, progress."""

  params: Any
  model_cfg: ModelConfig
  config: ml_collections.ConfigDict
  tokenizer: Any
  options: ProbeOptions
  progress: Any  # runner.Progress: `.start(probe, total)`, `.advance(label)`.
  batch_sharding: Any = None  # NamedSharding for a batch split over the devices (None: default).
  pretrained: str = ""  # the HF folder of `evaluate --hf` (no task: probes read text, ask in words).
  cells: Any = None  # cells.CellStore of `--resume` (None: every cell is computed, nothing saved).

  def cell(self, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()` (a JSON-ready value: numbers, strings, lists, dicts) for one cell of the running probe
    (one length, one n, ...), or, resuming (`cells`), the value an interrupted earlier run saved under
    `key` with the same checkpoint, config and options; each new value is saved as it is computed.
    Everything a cell depends on but draws from a shared random generator must be drawn outside
    `compute`, so that a skipped cell leaves the draws of the next ones unchanged."""
    if self.cells is None:
      return compute()
    return self.cells.get_or_compute(key, compute)

  def task(self):
    """The run's synthetic task (None for text)."""
    from lime_jax.data import tasks

    if self.config.data.task == tasks.TEXT_TASK:
      return None
    return tasks.get_task(self.config.data, int(self.config.seed))


@dataclasses.dataclass(frozen=True)
class Probe:
  """`compatible(ctx)` returns None when the probe can run on ctx's checkpoint (task, tokenizer,
  topology; it must not need the parameters), else the reason it cannot; None means it always can."""

  name: str
  run: Callable[[ProbeContext], dict]
  description: str = ""
  compatible: Callable[[ProbeContext], str | None] | None = None


class IncompatibleProbeError(ValueError):
  """A requested probe cannot run on the checkpoint (`lime_jax.evaluate --skip_incompatible` skips it)."""


def incompatibility(probe: Probe, ctx: ProbeContext) -> str | None:
  """Why `probe` cannot run on ctx's checkpoint, or None when it can."""
  return probe.compatible(ctx) if probe.compatible is not None else None


REGISTRY: dict[str, Probe] = {}  # name -> probe, filled from BUILTIN_MODULES on first use


def _load_builtin() -> None:
  for module in BUILTIN_MODULES:
    probe = importlib.import_module(f"lime_jax.probes.{module}").PROBE
    REGISTRY.setdefault(probe.name, probe)


def known_probes() -> tuple[str, ...]:
  _load_builtin()
  return tuple(REGISTRY)


def get_probe(name: str) -> Probe:
  _load_builtin()
  if name not in REGISTRY:
    raise ValueError(f"--probes: unknown probe {name!r}; known probes: {', '.join(REGISTRY)}.")
  return REGISTRY[name]
