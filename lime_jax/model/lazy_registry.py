"""Registries that name objects by `"module:attribute"` strings, imported when first asked for.

The topology and router registries use this, so that listing their names (lime_jax.config reads them for the
choices of a field) imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load(registry: Mapping[str, str], name: str, field: str, choices: tuple[str, ...] = ()) -> Any:
  """The object `registry[name]` names (`"package.module:ATTRIBUTE"`); an unknown name raises naming
  `field` (the config field that holds it) and the valid `choices` (default: every registered name)."""
  if name not in registry:
    raise ValueError(f"{field}={name!r} is unknown; choose one of {sorted(choices or registry)}.")
  module, attribute = registry[name].split(":")
  return getattr(importlib.import_module(module), attribute)
