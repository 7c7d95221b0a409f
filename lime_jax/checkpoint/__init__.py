"""Checkpoints of training runs.

Modules:
  checkpointer   orbax checkpoints of the train state and the data-iterator state, digests, damaged
                 steps, compatibility checks.
"""
