"""benchmarks/ scripts run as programs: the LIMe live-memory benchmark reads XLA's live-range dump."""

from __future__ import annotations

import os
import subprocess
import sys


def test_live_memory_benchmark_reads_the_peak():
  """benchmarks/lime_live_memory.py parses XLA's live-range dump (debug output, so a format change must
  show here): at a tiny size the live peak is positive, fits in the packed temp block, and LIMe's exceeds
  the baseline's (it holds the buffer)."""
  script = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks", "lime_live_memory.py")
  out = subprocess.run(
    [sys.executable, script, "--depths", "4", "--policies", "full", "--batch", "1", "--seq", "16"],
    capture_output=True,
    text=True,
    check=True,
    timeout=600,
  ).stdout
  row = next(line.split() for line in out.splitlines() if line.split()[:2] == ["full", "4"])
  temp_base, temp_lime, live_base, live_lime = map(float, (row[3], row[4], row[6], row[7]))
  assert 0 < live_base <= temp_base and 0 < live_lime <= temp_lime, out
  assert live_lime > live_base, out
