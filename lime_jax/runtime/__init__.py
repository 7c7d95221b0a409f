"""The process and its environment: devices, workdir files, caches, locks, errors, flag parsing.

Modules:
  sharding       the device mesh, logical axis names and the rules that turn them into shardings.
  distributed    multi-process start-up (`jax.distributed.initialize()` when the environment asks).
  fileio         workdir file access for local paths and bucket URLs (gs://...).
  caches         on-disk caches: jax's persistent compilation cache and measured values (the CPU peak).
  peak_flops     the peak FLOP/s per device behind MFU (a data sheet, or a measured matmul on CPU).
  workdir_lock   one training run per workdir (`WORKDIR/lock.json`).
  errors         `UserError` / `ConfigError` vs bugs: what the entry points print as one line.
  cli            flag parsing shared by the absl entry points that take `--config`.
  host_memory    huge pages for XLA:CPU's per-step host buffers (an entry point restarts itself once).
"""
