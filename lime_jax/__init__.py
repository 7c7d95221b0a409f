"""lime_jax: representation collapse in decoder-only transformers (LIMe, Seq-VCR, collapse probes)."""

__version__ = "0.1.0"
