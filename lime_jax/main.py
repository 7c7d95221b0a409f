"""Training entry point.

  python -m lime_jax.main --config=experiments/lime_deep.py[:preset] --workdir=DIR \
      [--config.model.num_layers=64 ...]

All logic lives in lime_jax.train.loop; this file parses flags and reports errors. A user error (config,
data, checkpoint, locked / full / read-only workdir, NaN loss: `errors.describe`) prints one `FATAL:` line
and exits 1; `--traceback` adds the Python traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before jax loads (lime_jax/runtime/host_memory.py)
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

import time

_IMPORT_START = time.perf_counter()

from absl import app, flags, logging  # noqa: E402 (imports are timed for the compile report)
from ml_collections import config_flags  # noqa: E402

from lime_jax.runtime import cli, distributed, errors  # noqa: E402
from lime_jax.train import loop  # noqa: E402

_IMPORTS_S = time.perf_counter() - _IMPORT_START  # jax, flax, orbax, grain, ...

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file[:preset].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_TRACEBACK = flags.DEFINE_bool(
  "traceback",
  False,
  "Also print the Python traceback (and the tracebacks orbax logs) of a user error: config, data, "
  "checkpoint, workdir, disk or NaN. Bugs always print theirs.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize()
  logging.set_verbosity(logging.WARNING)
  if not _TRACEBACK.value:
    cli.quiet_logged_tracebacks()
  try:
    loop.train(_CONFIG.value, _WORKDIR.value, startup={"imports_s": _IMPORTS_S})
  except Exception as e:  # pylint: disable=broad-except  (sorted into user errors and bugs)
    message = errors.describe(e)
    if message is None or _TRACEBACK.value:
      raise
    raise SystemExit(f"FATAL: {message}") from None


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
