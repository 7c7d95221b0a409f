"""Probes of trained (or random-init) checkpoints, run by `python -m lime_jax.evaluate`.

One module per probe, each defining `PROBE`, listed in `registry.BUILTIN_MODULES` (registry.py explains
the result format and how to add one): copying, counting (Glasses §3), collapse (Glasses §4 + toy
checks), oversquash (Glasses §5), entropy (matrix entropy, effective rank, adjacent cosine),
separability (LIMe linear probe), router (LIMe Fig. 5), lm (held-out perplexity, bits per byte).
`runner.py` restores checkpoints and writes results; `plotting.py` draws the plots.
Importing this package is light: the probe modules load on the first registry lookup.
"""

from lime_jax.probes.registry import Probe, ProbeContext, ProbeOptions, get_probe, known_probes

__all__ = ["Probe", "ProbeContext", "ProbeOptions", "get_probe", "known_probes"]
