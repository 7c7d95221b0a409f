"""The package layout: no import cycles, no import from a lower layer to a higher one, the shims of the
tools' old paths, and pyproject.toml's package list and accelerator extras. Sources are parsed (`ast`),
nothing is imported but the shims."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "lime_jax"

# Layers, low -> high; each entry is a package or module under lime_jax/ (a dotted prefix: "runtime" covers
# lime_jax/runtime/*). A module may import its own package, any lower layer, and the other packages of
# its layer only where ALLOWED_SAME_LAYER lists the pair. Every module must fall under one entry.
LAYERS: list[tuple[str, ...]] = [
  ("runtime", "gguf"),  # process / devices / files; the GGUF file reader (imports nothing of lime_jax)
  ("data", "losses"),  # tasks, tokenizers, input pipeline; pure loss and metric functions
  ("model",),  # ModelConfig, the transformer, topologies, FLOP counts, KV-cached decoding
  ("hf", "checkpoint", "config"),  # HF weights <-> params; orbax checkpoints; default config + validation
  ("evals", "analysis"),  # loading any model, greedy answers, scoring, the harness backend; metrics
  ("train", "probes"),  # the training loop; the probes
  (
    "tools",
    "inspect",  # activations, edits, logit lens on any loaded model (uses probes' prompt encoding)
    "sweep",
    "compare",
    "sample",
    "export",
    "info",
    "bench",
    "main",
    "evaluate",
    "harness",
    "experiments",
  ),
]
# The package root (lime_jax/__init__.py: the version) sits below every layer.
ROOT_LAYER = -1
# (importer's package, imported package) pairs of one layer that may import each other (none today; a
# pair no import uses fails the test).
ALLOWED_SAME_LAYER: set[tuple[str, str]] = set()
# The old paths of the tools: shims that exit with status 2 naming the new one.
SHIMS = ("sweep", "compare", "sample", "export", "info", "bench")


def _modules() -> dict[str, pathlib.Path]:
  """Module name -> source file, for lime_jax/ and experiments/ (installed as lime_jax.experiments)."""
  mods = {}
  for top, prefix in ((REPO / PACKAGE, [PACKAGE]), (REPO / "experiments", [PACKAGE, "experiments"])):
    for path in sorted(top.rglob("*.py")):
      parts = prefix + list(path.relative_to(top).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      mods[".".join(parts)] = path
  return mods


MODULES = _modules()


def _resolve(name: str) -> str:
  """The longest prefix of `name` that is one of MODULES ('' if none)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name


def _edges() -> dict[str, list[tuple[str, str]]]:
  """Module -> [(imported lime_jax module, 'file:line')], from every import statement (top level, inside
  functions and under TYPE_CHECKING alike)."""
  edges: dict[str, list[tuple[str, str]]] = {}
  for module, path in MODULES.items():
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = edges.setdefault(module, [])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(
            package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
          )
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
      else:
        continue
      where = f"{path.relative_to(REPO)}:{node.lineno}"
      for target in targets:
        assert target != "experiments" and not target.startswith("experiments."), (
          f"{where} imports {target!r}: experiments/ is installed as lime_jax.experiments"
        )
        if target == PACKAGE or target.startswith(PACKAGE + "."):
          resolved = _resolve(target)
          assert resolved, f"{where} imports {target!r}, which is no module of lime_jax"
          if resolved != module:
            out.append((resolved, where))
  return edges


EDGES = _edges()


def _find_cycle() -> list[str] | None:
  """One import cycle as [m0, m1, ..., m0], or None."""
  state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
  stack: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    stack.append(m)
    for target, _ in EDGES.get(m, ()):
      if state.get(target) == 1:
        return stack[stack.index(target) :] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    stack.pop()
    state[m] = 2
    return None

  for m in sorted(EDGES):
    if m not in state and (cycle := visit(m)):
      return cycle
  return None


def test_no_import_cycles():
  cycle = _find_cycle()
  if cycle:
    where = {(a, b): w for a in EDGES for b, w in EDGES[a]}
    steps = "\n".join(f"  {a} -> {b}  ({where[a, b]})" for a, b in zip(cycle, cycle[1:]))
    pytest.fail(f"import cycle:\n{steps}")


def _layer_entry(module: str) -> tuple[int, str]:
  """(layer index, the entry that covers `module`)."""
  if module == PACKAGE:
    return ROOT_LAYER, PACKAGE
  rel = module[len(PACKAGE) + 1 :]
  for i, layer in enumerate(LAYERS):
    for entry in layer:
      if rel == entry or rel.startswith(entry + "."):
        return i, entry
  raise AssertionError(
    f"{module} ({MODULES[module].relative_to(REPO)}) is in no layer of tests/unit/test_layout.py"
  )


def test_every_module_has_one_layer():
  entries = [e for layer in LAYERS for e in layer]
  assert len(entries) == len(set(entries)), entries
  for module in MODULES:
    _layer_entry(module)


def test_no_upward_or_sideways_imports():
  bad, allowed_used = [], set()
  for module, targets in sorted(EDGES.items()):
    low, low_entry = _layer_entry(module)
    for target, where in targets:
      high, high_entry = _layer_entry(target)
      if high > low:
        bad.append(
          f"  {where}: {module} (layer {low}, {low_entry}) imports {target} (layer {high}, {high_entry})"
        )
      elif high == low and low_entry != high_entry:
        if (low_entry, high_entry) in ALLOWED_SAME_LAYER:
          allowed_used.add((low_entry, high_entry))
        else:
          bad.append(f"  {where}: {module} imports {target}: same layer {low}, not in ALLOWED_SAME_LAYER")
  assert not bad, (
    "imports against the layers (low -> high: "
    + " < ".join(map("/".join, LAYERS))
    + "):\n"
    + ("\n".join(bad))
  )
  assert allowed_used == ALLOWED_SAME_LAYER, f"stale ALLOWED_SAME_LAYER: {ALLOWED_SAME_LAYER - allowed_used}"


@pytest.mark.parametrize("name", SHIMS)
def test_importing_an_old_tool_path_raises_system_exit(name):
  sys.modules.pop(f"{PACKAGE}.{name}", None)
  with pytest.raises(SystemExit) as info:
    importlib.import_module(f"{PACKAGE}.{name}")
  assert info.value.code == 2
  assert str(info.value) == f"lime_jax.{name} moved: run python -m lime_jax.tools.{name} <same args>"


# What the fast tier (tests/unit/) does not use: other processes and torch / transformers; those tests
# live in tests/integration/ and tests/e2e/ (tests/conftest.py marks them).
UNIT_TIER_FORBIDDEN = ("subprocess", "multiprocessing", "torch", "transformers")


def test_unit_tests_start_no_process_and_need_no_torch():
  bad = []
  for path in sorted((REPO / "tests" / "unit").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args:
        names = [getattr(node.args[0], "value", "")]
      else:
        continue
      where = f"{path.relative_to(REPO)}:{node.lineno}"
      bad += [f"  {where} imports {n}" for n in names if n.split(".")[0] in UNIT_TIER_FORBIDDEN]
  assert not bad, "move these tests to tests/integration/ or tests/e2e/:\n" + "\n".join(bad)


def test_pyproject_lists_every_package():
  tomllib = pytest.importorskip("tomllib")
  setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  on_disk = {m for m, path in MODULES.items() if path.name == "__init__.py"}
  assert set(setuptools["packages"]) == on_disk
  assert setuptools["package-dir"] == {"lime_jax.experiments": "experiments"}


def test_pyproject_has_accelerator_extras_and_readme_names_them():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  assert any(r.startswith("jax[cuda12]") for r in extras["cuda"])
  assert any(r.startswith("jax[cuda13]") for r in extras["cuda13"])
  assert any(r.startswith("jax[tpu]") for r in extras["tpu"])
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  assert 'pip install -e ".[cuda]"' in readme and 'pip install -e ".[tpu]"' in readme
