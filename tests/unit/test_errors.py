"""One-line user errors: `describe` sorts user errors from bugs, logged tracebacks are cut to one line,
non-finite config values and misspelt --config overrides are named."""

from __future__ import annotations

import errno
import logging
import sys

import pytest

from lime_jax import config as config_lib
from lime_jax.runtime import cli, errors
from tests.helpers.runs import tiny_config


# ------------------------------------------------------------------------------------------ --config.*
def test_misspelt_override_names_the_nearest_field():
  argv = ["prog", "--config=experiments/baseline.py:tiny"]
  assert cli.misspelt_override(argv + ["--config.train.num_steps=5"]) is None
  message = cli.misspelt_override(argv + ["--config.model.d_model=64", "--config.num_layers=3"])
  assert message.startswith(
    "--config.num_layers: the config has no field 'num_layers'. Did you mean --config.model.num_layers?"
  ), message


# ----------------------------------------------------------------------------------------- config, NaN
@pytest.mark.parametrize(
  "field,value",
  [("train.learning_rate", float("nan")), ("train.b2", float("inf")), ("model.rope_theta", float("-inf"))],
)
def test_non_finite_config_values_fail_naming_the_field(field, value):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(
    errors.ConfigError, match=rf"config\.{field}={value!r} is invalid: must be a finite number"
  ):
    config_lib.validate(config)


# ------------------------------------------------------------------------------------------ main errors
def test_describe_sorts_user_errors_from_bugs():
  def raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
      try:
        raise inner
      except Exception as e:
        raise outer from e
    except Exception as e:
      return e

  full = raised_from(
    ValueError("orbax save failed"), OSError(errno.ENOSPC, "No space left on device", "/w/x")
  )
  assert errors.describe(full).startswith(
    "disk full: [Errno 28] No space left on device: '/w/x'. Fix: free space"
  )
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "/w/m": Failed to write: No space left on device'
  )
  assert errors.describe(tensorstore).startswith("disk full: RESOURCE_EXHAUSTED")
  assert errors.describe(OSError(errno.EROFS, "Read-only file system")).startswith("read-only workdir")
  assert (
    errors.describe(ValueError("config.data.seq_len=3 is too short")) == "config.data.seq_len=3 is too short"
  )
  assert errors.describe(ValueError("operands could not be broadcast together")) is None  # a bug
  assert errors.describe(KeyError("params")) is None


def test_logged_tracebacks_are_cut_to_one_line_and_exit_echoes_dropped():
  keep = logging.LogRecord("orbax", logging.ERROR, "f.py", 1, "save failed", (), None)
  try:
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device\n[tensorstore_spec ...]")
  except ValueError:
    keep.exc_info = sys.exc_info()
  assert cli.NoTraceback().filter(keep) and keep.exc_info is None
  assert keep.getMessage() == "save failed [ValueError: RESOURCE_EXHAUSTED: No space left on device]"
  echo = logging.LogRecord(
    "asyncio", logging.ERROR, "b.py", 1, "Task exception was never retrieved\n", (), None
  )
  assert not cli.NoTraceback().filter(echo)
