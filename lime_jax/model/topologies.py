"""The topologies (how layers connect, `stack.Topology`), listed in one place.

Each topology module exports its `Topology` object; `REGISTRY` names it, one line per topology.
Adding a topology: its module plus one line here (its options: a sub-config in
`model_config.TOPOLOGY_CONFIGS` and `config.model.<name>`). This module imports nothing heavy
(lime_jax.config may read `NAMES`): a topology's module is imported when it is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lime_jax.model import lazy_registry

if TYPE_CHECKING:
  from lime_jax.model.stack import Topology

# config.model.topology -> "module:attribute" of its Topology object.
REGISTRY: dict[str, str] = {
  "plain": "lime_jax.model.stack:TOPOLOGY",
  "lime": "lime_jax.model.lime:TOPOLOGY",
  "denseformer": "lime_jax.model.denseformer:TOPOLOGY",
  "hyper_connections": "lime_jax.model.hyper_connections:TOPOLOGY",
  "value_residual": "lime_jax.model.value_residual:TOPOLOGY",
}
NAMES = tuple(REGISTRY)  # the choices of config.model.topology
# Plain-scan references of the memory-linear stacks, for benchmarks and tests only (not config choices).
REFERENCES: dict[str, str] = {
  "lime_scan": "lime_jax.model.lime:SCAN_TOPOLOGY",
  "denseformer_scan": "lime_jax.model.denseformer:SCAN_TOPOLOGY",
}


def get_topology(name: str) -> Topology:
  """The Topology object named by config.model.topology (or a reference's name)."""
  return lazy_registry.load({**REGISTRY, **REFERENCES}, name, "config.model.topology", choices=NAMES)
