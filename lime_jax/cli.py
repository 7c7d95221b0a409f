"""Flag parsing shared by the absl entry points that take `--config` (main, evaluate).

`app.run(main, flags_parser=cli.parse_flags)`: a misspelt `--config.<field>=...` override fails with the
field's dotted name and the closest valid ones, instead of ml_collections' bare KeyError/AttributeError
from the locked ConfigDict.
"""

from __future__ import annotations

import difflib
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
        f"--{flag}.{name}: the config has no field '{name}'.{hint} Every field and its default is "
        "in lime_jax/config.py (those of config.model: lime_jax/model/model_config.py)."
      )
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's `parse_flags_with_usage`, naming a misspelt --config override (see the module docstring)."""
  try:
    return app.parse_flags_with_usage(argv)
  except Exception:  # ml_collections raises KeyError, AttributeError or ValueError here
    message = misspelt_override(argv)
    if message is None:
      raise
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)
