"""LIMe routers (docs/methods.md §2): one object per kind, and the registry of them.

A router (`base.Router`) owns its parameters, its three stages per layer (`LayerFns`: pre / mix /
post), its mixing FLOPs and its analysis (LIMe Fig. 5); the 'lime' topology (lime_jax/model/lime.py)
only calls it. Adding a router: a module in this package with a `Router` instance, plus one line in
`REGISTRY` (which also puts it under tests/integration/test_lime_exactness.py's exactness check of its
stages). This module imports nothing heavy (lime_jax.config may read `NAMES`): a router's module is
imported when the router is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lime_jax.model import lazy_registry

if TYPE_CHECKING:
  from lime_jax.model.routers.base import Router

# config.model.lime.router -> "module:attribute" of its router object.
REGISTRY: dict[str, str] = {
  "kv": "lime_jax.model.routers.kv:KV",
  "static": "lime_jax.model.routers.v1:STATIC",
  "dynamic": "lime_jax.model.routers.v1:DYNAMIC",
  "top_p": "lime_jax.model.routers.v1:TOP_P",
}
NAMES = tuple(REGISTRY)  # the choices of config.model.lime.router


def get_router(name: str) -> Router:
  """The router object named by config.model.lime.router."""
  return lazy_registry.load(REGISTRY, name, "config.model.lime.router")
