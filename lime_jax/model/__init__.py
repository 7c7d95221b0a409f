"""Flax modules of the decoder.

- layers.py: norms, RoPE, MLPs;          - attention.py: causal GQA attention (xla / cudnn / explicit);
- block.py: one pre-norm layer;          - stack.py: the scanned stack and the topology registry;
- transformer.py: embeddings -> stack -> logits;  - model_config.py: the hashable ModelConfig.
- lime.py: LIMe routers and the 'lime' topology;  - lime_vjp.py: its memory-linear custom VJP.
- denseformer.py, hyper_connections.py, value_residual.py: the other cross-layer topologies.
"""

from lime_jax.model import lime  # noqa: F401  (registers the 'lime' topology)
# Other cross-layer topologies (SPEC §3), each registering itself on import.
from lime_jax.model import denseformer, hyper_connections, value_residual  # noqa: F401
from lime_jax.model.model_config import LimeConfig, ModelConfig
from lime_jax.model.stack import StackOutput, get_topology, init_cache, register_topology
from lime_jax.model.transformer import Transformer, init_params

__all__ = ["LimeConfig", "ModelConfig", "StackOutput", "Transformer", "get_topology", "init_cache",
           "init_params", "register_topology"]
