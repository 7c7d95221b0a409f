"""Evaluations of a model beyond the held-out loss (run by the training loop and the probes).

Modules:
  greedy_answers    held-out evaluation by greedy decoding (`config.eval.greedy`): exact match,
                    per-answer-position accuracy, matrix entropy of the Seq-VCR layer.
  multiple_choice   multiple-choice jsonl tasks (hellaswag, arc, piqa, winogrande, generic) scored by
                    log-likelihood as lm-evaluation-harness does.
"""
