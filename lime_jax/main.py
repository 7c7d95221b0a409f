"""Training entry point.

  python -m lime_jax.main --config=experiments/lime_deep.py[:preset] --workdir=DIR \
      [--config.model.num_layers=64 ...]

All logic lives in lime_jax.train; this file only parses flags.
"""

from __future__ import annotations

import time

_IMPORT_START = time.perf_counter()

from absl import app, flags, logging  # noqa: E402 (imports are timed for the compile report)
from ml_collections import config_flags  # noqa: E402

from lime_jax import cli, distributed, train  # noqa: E402

_IMPORTS_S = time.perf_counter() - _IMPORT_START  # jax, flax, orbax, grain, ...

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file[:preset].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize()
  logging.set_verbosity(logging.WARNING)
  train.train(_CONFIG.value, _WORKDIR.value, startup={"imports_s": _IMPORTS_S})


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
