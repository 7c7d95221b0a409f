"""In-process tests of one module or package: no subprocess, no torch / transformers, no checkpoint
writes, no training loop (the fast tier: `pytest -m "not integration"`)."""
