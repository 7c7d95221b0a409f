"""Analyses of trained models: LIMe routing (router.py)."""

from lime_jax.analysis.router import router_analysis, save_router_analysis

__all__ = ["router_analysis", "save_router_analysis"]
