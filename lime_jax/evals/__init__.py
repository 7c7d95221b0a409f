"""Evaluations beyond the held-out loss: the training loop's, the probes', lm-evaluation-harness's.

Modules:
  greedy_answers    held-out evaluation by greedy decoding (`config.eval.greedy`): exact match,
                    per-answer-position accuracy, matrix entropy of the Seq-VCR layer.
  scoring           batched continuation log-likelihoods of token rows (log p, greedy), length buckets.
  lm_harness        the lm-evaluation-harness backend `lime_jax` (`LimeJaxLM`): loglikelihood, rolling
                    log-likelihood and KV-cached greedy generate_until on any model the library loads.
"""
