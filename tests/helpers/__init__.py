"""Test helpers shared by the tiers: tiny Hugging Face and GGUF models, the sharding worker, tiny runs."""
