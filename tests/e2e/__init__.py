"""Programs in subprocesses: python -m lime_jax.main / evaluate / tools, benchmarks, launch scripts,
multi-process jax.distributed, SIGTERM (marked `e2e` and `integration`)."""
