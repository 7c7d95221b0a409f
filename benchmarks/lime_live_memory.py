"""LIMe vs baseline memory: XLA's packed temp allocation against the peak of live data.

`memory_analysis().temp_size_in_bytes` (what lime_vs_baseline.py reports) is the size of the one temp
block XLA's buffer assignment packs every intermediate into, so it includes packing gaps. This script
also reads XLA's live-range analysis of the same compiled step (its `--xla_dump_to` debug dump) and
reports the largest sum of bytes live at one point of the schedule, parameters excluded. The overhead
ratios divide LIMe - base by the buffer plus its cotangent, as in lime_vs_baseline.py.

  python benchmarks/lime_live_memory.py                       # depths 8 16 32 64, policies none full

The live-range dump is XLA's debug output, not an API: if its format changes, the script says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import shutil
import tempfile

DUMP_DIR = tempfile.mkdtemp(prefix="lime_live_memory_")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP_DIR} --xla_dump_hlo_module_re=.*jit_step.*"
)

from lime_vs_baseline import MIB, compile_step, model_config  # noqa: E402  (XLA_FLAGS first: see above)

from lime_jax.model.lime import buffer_bytes  # noqa: E402

_PEAK_SECTION = re.compile(r"Live ranges at \d+ \(peak\):\n(.*?)\n\s*Stack trace", re.S)
_LIVE_VALUE = re.compile(r"^\s+\S+: (\d+) bytes", re.M)


def peak_live_bytes(compiled) -> int:
  """Peak live bytes of the step XLA compiled last, minus its arguments (live throughout)."""
  dumps = sorted(glob.glob(os.path.join(DUMP_DIR, "*jit_step*live-range.txt")), key=os.path.getmtime)
  if not dumps:
    raise RuntimeError(f"XLA wrote no live-range dump to {DUMP_DIR}; this jax/XLA version lacks it.")
  match = _PEAK_SECTION.search(open(dumps[-1]).read())
  if match is None:
    raise RuntimeError(f"no '(peak)' section in {dumps[-1]}: XLA's dump format changed.")
  live = sum(int(b) for b in _LIVE_VALUE.findall(match.group(1)))
  return live - compiled.memory_analysis().argument_size_in_bytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64])
  parser.add_argument("--policies", nargs="+", default=["none", "full"])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--keep_dumps", action="store_true", help="keep XLA's dump directory (printed).")
  args = parser.parse_args()
  try:
    _table(args)
  finally:
    if args.keep_dumps:
      print(f"XLA dumps kept in {DUMP_DIR}")
    else:
      shutil.rmtree(DUMP_DIR, ignore_errors=True)


def _table(args: argparse.Namespace) -> None:
  print(f"B={args.batch} T={args.seq} D=256 N=R=8 F=1024 fp32, MiB")
  print(
    f"{'policy':>6} {'L':>3} {'buf+cot':>8} {'temp base':>9} {'temp lime':>9} {'ovh/bc':>6} "
    f"{'live base':>9} {'live lime':>9} {'ovh/bc':>6}"
  )
  for policy in args.policies:
    for depth in args.depths:
      base = model_config(depth, policy)
      temp, live = {}, {}
      for name, cfg in (("base", base), ("lime", dataclasses.replace(base, topology="lime"))):
        run = compile_step(cfg, args.batch, args.seq)
        temp[name], live[name] = run["temp"], peak_live_bytes(run["compiled"])
      bufcot = 2 * buffer_bytes(dataclasses.replace(base, topology="lime"), args.batch, args.seq)
      print(
        f"{policy:>6} {depth:>3} {bufcot / MIB:8.1f} {temp['base'] / MIB:9.2f} {temp['lime'] / MIB:9.2f} "
        f"{(temp['lime'] - temp['base']) / bufcot:6.3f} {live['base'] / MIB:9.2f} {live['lime'] / MIB:9.2f} "
        f"{(live['lime'] - live['base']) / bufcot:6.3f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
