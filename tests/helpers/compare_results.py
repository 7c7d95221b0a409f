"""Two probe results (results.json 'probes' dicts) compared as numbers: the sharded and the replicated runs
of tests/helpers/sharded_probe_worker.py and tests/e2e/test_sharded_multiprocess.py."""

from __future__ import annotations

import re

TIMINGS = ("seconds", "created")  # wall-clock fields, not results
_NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def differences(a, b, path: str = "") -> tuple[float, list[str]]:
  """(largest absolute difference of the numbers, paths of other values that differ) of two results."""
  if isinstance(a, dict) and isinstance(b, dict):
    worst, odd = 0.0, [] if a.keys() == b.keys() else [f"{path} keys"]
    for k in a.keys() & b.keys():
      if k not in TIMINGS:
        w, o = differences(a[k], b[k], f"{path}/{k}")
        worst, odd = max(worst, w), odd + o
    return worst, odd
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return 0.0, [f"{path} length"]
    worst, odd = 0.0, []
    for i, (x, y) in enumerate(zip(a, b)):
      w, o = differences(x, y, f"{path}/{i}")
      worst, odd = max(worst, w), odd + o
    return worst, odd
  if isinstance(a, float) or isinstance(b, float):
    if a is None or b is None:
      return 0.0, [] if a is b else [path]
    return abs(float(a) - float(b)), []
  if isinstance(a, str) and isinstance(b, str) and a != b:  # a summary's formatted numbers: as numbers
    words_a, words_b = re.split(_NUMBER, a), re.split(_NUMBER, b)
    nums_a, nums_b = [float(x) for x in re.findall(_NUMBER, a)], [float(x) for x in re.findall(_NUMBER, b)]
    if words_a != words_b or len(nums_a) != len(nums_b):
      return 0.0, [path]
    return max(abs(x - y) for x, y in zip(nums_a, nums_b)), []
  return 0.0, [] if a == b else [path]
