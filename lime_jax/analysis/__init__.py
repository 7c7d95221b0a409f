"""Analyses of representations and trained models: representation metrics (representation.py: numpy
only, the one definition of matrix entropy, effective rank, RankMe, anisotropy, TwoNN dimension) and
LIMe routing (router.py). `router_analysis` / `save_router_analysis` load router.py, and with it the
model, on first use, so that importing the metrics stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["router_analysis", "save_router_analysis"]


def __getattr__(name: str) -> Any:
  if name in __all__:
    from lime_jax.analysis import router

    return getattr(router, name)
  raise AttributeError(f"module 'lime_jax.analysis' has no attribute {name!r}")
