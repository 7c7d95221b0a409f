"""Flax modules of the decoder.

- layers.py: norms, RoPE, MLPs;          - attention.py: causal GQA attention (xla / cudnn / explicit);
- block.py: one pre-norm layer;          - stack.py: the scanned stack and the `Topology` interface;
- transformer.py: embeddings -> stack -> logits;  - model_config.py: the hashable ModelConfig.
- topologies.py: the list of topologies;  - lime.py: the 'lime' topology;  - lime_stack.py: its custom VJP
  (lime_mix.py: its mix kernels; layer_scan.py: the residual-aware layer scan under it).
- routers/: LIMe's routers (kv, static, top_p, dynamic) and their list.
- denseformer.py, hyper_connections.py, value_residual.py: the other cross-layer topologies.
- flops.py: analytic FLOP counts (each topology's `extra_flops` included; the MFU numerator).
- decode.py: KV-cached greedy decoding (answers, continuations).

The names below are imported on first use, so that importing a light submodule (model_config,
topologies, routers) does not import Flax and every topology.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
  "LimeConfig": "model_config",
  "ModelConfig": "model_config",
  "StackOutput": "stack",
  "init_cache": "stack",
  "get_topology": "topologies",
  "Transformer": "transformer",
  "init_params": "transformer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'lime_jax.model' has no attribute {name!r}")
  return getattr(importlib.import_module(f"lime_jax.model.{_EXPORTS[name]}"), name)
