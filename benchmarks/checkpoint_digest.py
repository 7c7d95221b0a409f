"""Cost of the checkpoint digests (lime_jax/checkpoint/integrity.py): hashing a step's files after the
save commits, and hashing them again before a restore.

  python benchmarks/checkpoint_digest.py [--specs experiments/baseline.py:tiny ...] [--synthetic_mib 256]
      [--repeats 5] [--json OUT]

For each config: the state is initialised (no training: the bytes on disk are what matter), saved with a
synchronous `Checkpointer` (orbax save + digests.json), restored, and the digests are written and
verified on their own; medians over `--repeats`. `--synthetic_mib N` adds a state of N MiB of random
float32 arrays (64 MiB each), for the cost at a size where files, not calls, dominate. Save and restore
are the local-disk times of this machine; the digest times scale with the checkpoint's bytes (SHA-256,
streamed in 4 MiB reads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections.config_flags.config_flags import ConfigFileFlagParser  # noqa: E402

from lime_jax import checkpoint as ckpt_lib  # noqa: E402
from lime_jax.train import loop as train_lib  # noqa: E402

SPECS = ("experiments/baseline.py:tiny", "experiments/lime_deep.py:default,lime")


def _seconds(fn, *args, **kwargs) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args, **kwargs))
  return time.perf_counter() - start


def one_round(workdir: str, state, abstract) -> tuple[tuple[float, ...], str]:
  """(save, digest, restore, verify) seconds of one fresh checkpoint directory, and the step folder."""
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  save = _seconds(checkpointer.save, 1, state, None, {"step": 1}, force=True)
  step_dir = os.path.join(checkpointer.directory, "1")
  digest = _seconds(ckpt_lib.write_digests, step_dir)
  restore = _seconds(checkpointer.restore, 1, abstract, None)
  verify = _seconds(ckpt_lib.digest_damage, step_dir, ("state", "meta"))
  checkpointer.close()
  return (save, digest, restore, verify), step_dir


def config_state(spec: str):
  """The initial train state of an experiment config."""
  run = train_lib.build(ConfigFileFlagParser(name="config").parse(spec))
  return jax.block_until_ready(train_lib.create_state(run))


def synthetic_state(mib: int) -> dict[str, jax.Array]:
  """`mib` MiB of random float32 arrays of 64 MiB each."""
  rng = np.random.default_rng(0)
  return {
    f"a{i}": jax.numpy.asarray(rng.standard_normal(2**24, np.float32)) for i in range(max(1, mib // 64))
  }


def measure(state, repeats: int) -> dict[str, float]:
  """Median seconds of save (with digests), digests alone, restore, verify alone; and the bytes."""
  abstract = ckpt_lib.abstract_like(state)
  rows: dict[str, list[float]] = {"save_s": [], "digest_s": [], "restore_s": [], "verify_s": []}
  root = tempfile.mkdtemp(prefix="digest_bench_")
  try:
    for i in range(repeats + 1):  # the first round warms up orbax and the file cache
      times, step_dir = one_round(os.path.join(root, str(i)), state, abstract)
      for key, value in zip(rows, times):
        rows[key] += [value] if i else []
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir) for f in fs)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  out = {k: statistics.median(v) for k, v in rows.items()}
  out["orbax_save_s"] = out["save_s"] - out["digest_s"]  # save_s includes the commit hook's digests
  out["bytes"] = size
  out["params"] = train_lib.param_count(getattr(state, "params", state))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--specs", nargs="+", default=list(SPECS))
  parser.add_argument("--synthetic_mib", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  results = {spec: measure(config_state(spec), args.repeats) for spec in args.specs}
  if args.synthetic_mib:
    results[f"synthetic {args.synthetic_mib} MiB"] = measure(
      synthetic_state(args.synthetic_mib), args.repeats
    )
  print(
    "| config | params | step on disk | orbax save | + digests | restore | + verify | digest / save | "
    "verify / restore |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for spec, r in results.items():
    print(
      f"| `{spec}` | {r['params']:,} | {r['bytes'] / 2**20:.2f} MiB | {1e3 * r['orbax_save_s']:.1f} ms | "
      f"{1e3 * r['digest_s']:.1f} ms | {1e3 * r['restore_s']:.1f} ms | {1e3 * r['verify_s']:.1f} ms | "
      f"{100 * r['digest_s'] / r['orbax_save_s']:.1f}% | {100 * r['verify_s'] / r['restore_s']:.1f}% |"
    )
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
