#!/usr/bin/env bash
# One-GPU device check (issue 32, item 4): a ~350M LLaMA-style model, plain and LIMe, bf16 compute, cuDNN
# and XLA attention: step time, tokens/s, MFU, peak memory, LIMe / plain ratios, cuDNN vs XLA logits.
# Under 8 minutes on one H100 / H200 (benchmarks/device_check.py; its flags pass through).
#
#   bash benchmarks/device_check.sh [--batch=8] [--remat=none] [--out=device_check.json]
#   bash benchmarks/device_check.sh --quick    # tiny model: a CPU smoke test
#
# Runs from the repo root: a relative --out is relative to it. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" benchmarks/device_check.py "$@"
