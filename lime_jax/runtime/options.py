"""Typed config sections: every field declared once, and the generic code that reads the declarations.

A section of the config (`config.model`, `config.data`, `config.data.arithmetic`, `config.train`, ...) is a
frozen dataclass whose fields are declared with `option(default, doc, choices, check)`: the default, its
documentation, its valid values and its range are written there and nowhere else. From the declarations:

- `config_dict(cls)` / `defaults(cls)`: the ml_collections ConfigDict of the defaults (lime_jax/config
  builds `default_config()` from them);
- `from_node(cls, node)`: the typed section from a ConfigDict or a saved config's JSON dict (fields the
  node lacks keep their defaults, so a config saved by an older version still loads);
- `check_section(cls, node, prefix)`: each field's type, choices and range, then the section's own rules
  (a `check_rules(self, prefix)` method on the dataclass, e.g. min_length <= max_length of a task); an
  error is a ConfigError naming the field and the fix:
  `config.train.learning_rate=-1.0 is invalid: must be > 0 (e.g. 1e-3).`

Rules that read fields of two sections (batch vs devices, data vs model) are the config's
(`lime_jax.config.validate`). This module sits in the lowest layer so that the data layer's task modules
can declare their own sections.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Callable
from typing import Any

import ml_collections

from lime_jax.runtime.errors import ConfigError

# A field's valid values: a tuple, or a function returning one (a registry read when checked, e.g. the
# registered topologies; called lazily so that the registry's module may import the declaring one).
Choices = tuple | Callable[[], tuple]


@dataclasses.dataclass(frozen=True)
class Check:
  """A rule on one value: `test(value)` holds for a valid value; `text` says which values are valid
  ('must be > 0 (e.g. 1e-3).'), the fix an error message gives."""

  test: Callable[[Any], bool]
  text: str


def option(default: Any, doc: str = "", choices: Choices = (), check: Check | tuple = (), **metadata) -> Any:
  """A dataclass field with its default, a one-line-or-more `doc`, for a choice its valid values, and the
  `check`(s) its value must pass; further keyword arguments are kept in the field's metadata (`type_text`:
  what a value of the wrong type is told it must be, e.g. "a string: '' (off) or a directory")."""
  checks = check if isinstance(check, tuple) else (check,)
  return dataclasses.field(
    default=default, metadata={"doc": doc, "choices": choices, "checks": checks, **metadata}
  )


def _number(x: float) -> str:
  return f"{x:g}" if isinstance(x, float) else str(x)


def _note(note: str) -> str:
  return f" ({note})" if note else ""


def satisfies(test: Callable[[Any], bool], text: str) -> Check:
  """A check with its own wording (`text`: 'must be ...')."""
  return Check(test, text)


def at_least(low: float, note: str = "") -> Check:
  return Check(lambda v: v >= low, f"must be >= {_number(low)}{_note(note)}.")


def above(low: float, note: str = "") -> Check:
  return Check(lambda v: v > low, f"must be > {_number(low)}{_note(note)}.")


def within(
  low: float, high: float, *, open_low: bool = False, open_high: bool = False, note: str = ""
) -> Check:
  """low <= value <= high ('[low, high]'); `open_low` / `open_high` exclude that end ('(low, high)')."""

  def test(v) -> bool:
    return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

  bounds = f"{'(' if open_low else '['}{_number(low)}, {_number(high)}{')' if open_high else ']'}"
  return Check(test, f"must be in {bounds}{_note(note)}.")


POSITIVE = Check(lambda v: v > 0, "must be a positive integer.")


def fail(field: str, value: Any, fix: str) -> typing.NoReturn:
  """Raises the ConfigError of `config.<field>`: its value and the fix."""
  raise ConfigError(f"config.{field}={value!r} is invalid: {fix}")


# ------------------------------------------------------------------------------------- declarations


def _fields(cls: type) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls)}


def field_choices(cls: type, name: str) -> tuple:
  """The valid values of the choice field `name` of dataclass `cls`; () when it is not a choice."""
  choices = _fields(cls)[name].metadata.get("choices", ())
  return tuple(choices() if callable(choices) else choices)


def field_doc(cls: type, name: str) -> str:
  """The documentation of field `name` of dataclass `cls` ('' when it has none)."""
  return _fields(cls)[name].metadata.get("doc", "")


def field_checks(cls: type, name: str) -> tuple[Check, ...]:
  """The checks declared on field `name` of dataclass `cls`."""
  return tuple(_fields(cls)[name].metadata.get("checks", ()))


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
  """The resolved type of each field of dataclass `cls` (annotations are strings under `from __future__
  import annotations`)."""
  return typing.get_type_hints(cls)


def defaults(cls: type) -> dict[str, Any]:
  """{field: default} of dataclass `cls`, nested dataclasses as nested dicts."""
  out = {}
  for f in dataclasses.fields(cls):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    out[f.name] = defaults(type(value)) if dataclasses.is_dataclass(value) else value
  return out


def config_dict(cls: type) -> ml_collections.ConfigDict:
  """An ml_collections ConfigDict holding the defaults of dataclass `cls` (sub-dataclasses nested)."""
  return ml_collections.ConfigDict(defaults(cls))


def _has(node: Any, name: str) -> bool:
  return hasattr(node, name) if dataclasses.is_dataclass(node) else name in node


def _get(node: Any, name: str) -> Any:
  return getattr(node, name) if dataclasses.is_dataclass(node) else node[name]


def from_node(cls: type, node: Any, **resolved) -> Any:
  """An instance of dataclass `cls` from a ConfigDict / dict node; fields it lacks (a config saved by an
  older version) keep their defaults, keys `cls` lacks are ignored. A tuple field's items are converted to
  its item type (JSON gives lists); `resolved` sets fields outright."""
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in resolved or not _has(node, f.name):
      continue
    value, kind = _get(node, f.name), field_types(cls)[f.name]
    if dataclasses.is_dataclass(kind):
      kwargs[f.name] = from_node(kind, value)
    elif typing.get_origin(kind) is tuple:
      kwargs[f.name] = tuple(typing.get_args(kind)[0](v) for v in value)
    else:
      kwargs[f.name] = value
  return cls(**kwargs, **resolved)


# ------------------------------------------------------------------------------------------- checks


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


# type -> (test, what an error says the value must be)
_TYPES: dict[Any, tuple[Callable[[Any], bool], str]] = {
  bool: (lambda v: isinstance(v, bool), "True or False"),
  int: (_is_int, "an integer"),
  float: (_is_number, "a number"),
  str: (lambda v: isinstance(v, str), "a string"),
}


def _type_error(kind: Any, value: Any, type_text: str = "") -> str | None:
  """What is wrong with the type of `value` for a field of type `kind` (None: nothing, or not checked)."""
  if kind in _TYPES:
    test, text = _TYPES[kind]
    if not test(value):
      return f"must be {type_text or text}."
    if kind is float and not math.isfinite(value):
      return "must be a finite number (NaN and Inf are refused)."
    return None
  if typing.get_origin(kind) is tuple and typing.get_args(kind)[-1] is Ellipsis:
    item = typing.get_args(kind)[0]
    if item not in _TYPES:
      return None
    if not isinstance(value, (tuple, list)) or any(_type_error(item, v) for v in value):
      return f"must be a tuple of {_TYPES[item][1].removeprefix('an ').removeprefix('a ')}s."
  return None


def check_value(
  field: str, kind: Any, value: Any, choices: tuple = (), checks: tuple[Check, ...] = (), type_text: str = ""
) -> None:
  """Checks one value against its declaration: choices (when given), else its type (`type_text`: what it
  must be, default from the type); then its checks."""
  if choices:
    if value not in choices:
      fail(field, value, f"choose one of {', '.join(map(repr, choices))}.")
  elif problem := _type_error(kind, value, type_text):
    fail(field, value, problem)
  for check in checks:
    if not check.test(value):
      fail(field, value, check.text)


def check_section(cls: type, node: Any, prefix: str) -> None:
  """Checks the fields of section `cls` held by `node` (a ConfigDict, a dict or a `cls` instance; fields it
  lacks are skipped), sub-sections recursively, then the section's own rules (`cls.check_rules`).
  `prefix`: the section's dotted name in the config ('train', 'data.arithmetic'; '' for the root)."""
  kinds = field_types(cls)
  for f in dataclasses.fields(cls):
    if not _has(node, f.name):
      continue
    name, kind, value = f"{prefix}.{f.name}" if prefix else f.name, kinds[f.name], _get(node, f.name)
    if dataclasses.is_dataclass(kind):
      if not isinstance(value, (ml_collections.ConfigDict, dict, kind)):
        fail(name, value, f"must be a section (the fields of {kind.__name__}).")
      check_section(kind, value, name)
    else:
      type_text = f.metadata.get("type_text", "")
      check_value(name, kind, value, field_choices(cls, f.name), field_checks(cls, f.name), type_text)
  rules = getattr(cls, "check_rules", None)
  if rules is not None:
    rules(node if isinstance(node, cls) else from_node(cls, node), prefix)
