"""Flag parsing shared by the absl entry points that take `--config` (main, evaluate).

`app.run(main, flags_parser=cli.parse_flags)`: a misspelt `--config.<field>=...` override fails with the
field's dotted name and the closest valid ones, instead of ml_collections' bare KeyError/AttributeError
from the locked ConfigDict; a missing experiment file names the ones that exist, and an error raised by
the file's `get_config` (e.g. an unknown preset) is printed as its one message, without tracebacks.
"""

from __future__ import annotations

import difflib
import glob
import logging as std_logging
import os
import re
import sys
from typing import Any

import ml_collections
from absl import app
from ml_collections.config_flags.config_flags import ConfigFileFlagParser


def field_names(config: Any, prefix: str = "") -> list[str]:
  """Every dotted field name of a ConfigDict, sections included ('train', 'train.num_steps', ...)."""
  names = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    names.append(name)
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f"{name}.")
  return names


def _config_spec(argv: list[str], flag: str) -> str | None:
  """The value of --<flag>=SPEC (or --<flag> SPEC) in argv."""
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{flag}(=(.*))?$", arg)
    if match:
      return match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def misspelt_override(argv: list[str], flag: str = "config") -> str | None:
  """A message naming the first `--<flag>.<name>` override in argv that is not a field of the config
  that --<flag> loads, with the closest valid names; None if every override names a field."""
  spec = _config_spec(argv, flag)
  if not spec:
    return None
  try:
    config = ConfigFileFlagParser(name=flag).parse(spec)
    valid = field_names(config)
  except Exception:  # pylint: disable=broad-except  (the config itself fails: absl reports that)
    return None
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{flag}\.([^=]+)", arg)
    if match and match.group(1) not in valid:
      name = match.group(1)
      parent, _, leaf = name.rpartition(".")
      if parent in valid:  # a misspelt leaf: compare with its section's fields only
        siblings = [v.rpartition(".")[2] for v in valid if v.rpartition(".")[0] == parent]
        close = [f"{parent}.{c}" for c in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.7)]
      else:
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.7)
      hint = f" Did you mean {' or '.join(f'--{flag}.{c}' for c in close)}?" if close else ""
      return (
        f"--{flag}.{name}: the config has no field '{name}'.{hint} Every field, its default and doc are "
        "declared in lime_jax/config/sections.py (config.model: lime_jax/model/model_config.py; "
        "config.data.<task>: lime_jax/data/<task>.py)."
      )
  return None


def _last_error_line(text: str) -> str:
  """The last 'SomeError: message' line of a formatted traceback (the message alone), else the text."""
  found = re.findall(r"^\s*(?:[\w.]+(?:Error|Exception)): (.+)$", text, flags=re.M)
  return found[-1].strip() if found else text.strip().splitlines()[-1]


def config_file_problem(argv: list[str], flag: str = "config") -> str | None:
  """A message when --<flag>=FILE[:preset] names no file (listing the experiment files beside it, or in
  ./experiments) or its get_config fails (e.g. an unknown preset: the function's own message)."""
  spec = _config_spec(argv, flag)
  if not spec:
    return None
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    folder = os.path.dirname(path) if os.path.isdir(os.path.dirname(path) or ".") else "experiments"
    choices = sorted(
      p for p in glob.glob(os.path.join(folder or ".", "*.py")) if not os.path.basename(p).startswith("_")
    )
    listed = ", ".join(choices) if choices else f"none in {folder or '.'}/"
    return f"--{flag}={spec}: there is no file {path!r}. Experiment files: {listed}."
  try:
    ConfigFileFlagParser(name=flag).parse(spec)
  except Exception as e:  # pylint: disable=broad-except  (ml_collections wraps the error in its text)
    return f"--{flag}={spec}: {_last_error_line(str(e))}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's `parse_flags_with_usage`, naming a missing experiment file, a get_config error or a
  misspelt --config override in one line (see the module docstring)."""
  message = config_file_problem(argv)
  if message is None:
    try:
      return app.parse_flags_with_usage(argv)
    except Exception:  # ml_collections raises KeyError, AttributeError or ValueError here
      message = misspelt_override(argv)
      if message is None:
        raise
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.exit(1)


class NoTraceback(std_logging.Filter):
  """Keeps a log record's message, drops its traceback (orbax logs one per failed thread); drops
  asyncio's 'exception was never retrieved' notes, echoes of a failed save's error found at exit."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False
    if record.exc_info:
      error = record.exc_info[1]
      first = str(error).split("[tensorstore_spec")[0].strip().splitlines()
      record.msg = f"{record.getMessage()} [{type(error).__name__}: {first[0][:300] if first else ''}]"
      record.args, record.exc_info, record.exc_text = (), None, None
    return True


def _is_closed_loop_echo(error: BaseException | None) -> bool:
  """tensorstore's callbacks posting to the asyncio loop orbax has closed after a failed save: noise that
  repeats the save's own error (reported once by main)."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def quiet_logged_tracebacks() -> None:
  """Log records keep one line each: their tracebacks are dropped, and the 'Event loop is closed' echoes
  of a failed orbax save are not printed (see main's --traceback)."""
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(NoTraceback())
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def quiet_excepthook(kind, value, tb):
    if not _is_closed_loop_echo(value):
      excepthook(kind, value, tb)

  def quiet_unraisablehook(unraisable):
    if not _is_closed_loop_echo(unraisable.exc_value):
      unraisablehook(unraisable)

  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
