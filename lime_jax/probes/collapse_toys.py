"""The toy checks of Glasses App. C.3 (docs/methods.md §6), in numpy: softmax total variation, one random
attention layer with sinusoidal positions."""

from __future__ import annotations

import numpy as np

# docs/methods.md §6: mean total variation over 5 seeds, by n.
PUBLISHED_TV_MEANS = {
  500: 0.0258,
  750: 0.0212,
  1000: 0.0170,
  1500: 0.0117,
  2000: 0.0091,
  2500: 0.0078,
  3000: 0.0066,
  4000: 0.0050,
  5000: 0.0041,
  10000: 0.0020,
}


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def total_variation(n: int, seed: int, perturbed: int = 200, noise: float = 0.1) -> float:
  """sum_i |softmax(x)_i - softmax(x*)_i| (no 1/2), x ~ U[0,1]^n, x* = x + U[0, noise] on the first
  `perturbed` entries."""
  rng = np.random.default_rng(seed)
  x = rng.random(n)
  x_star = x.copy()
  x_star[:perturbed] += rng.random(min(perturbed, n)) * noise
  return float(np.abs(_softmax(x) - _softmax(x_star)).sum())


def total_variation_means(ns=tuple(PUBLISHED_TV_MEANS), seeds=range(5)) -> dict[int, float]:
  """Mean total variation over `seeds` for each n."""
  return {int(n): float(np.mean([total_variation(n, s) for s in seeds])) for n in ns}


def sinusoidal_positions(num: int, d: int) -> np.ndarray:
  """Vaswani et al. positional encodings [num, d]: sin on even, cos on odd features."""
  pos = np.arange(num)[:, None]
  freq = 1.0 / (10_000.0 ** (np.arange(0, d, 2) / d))
  pe = np.zeros((num, d))
  pe[:, 0::2] = np.sin(pos * freq)
  pe[:, 1::2] = np.cos(pos * freq)
  return pe


def random_attention_outputs(n: int, seed: int, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Last-token outputs of one random softmax attention layer for `1`*n and `1`*(n+1).

  Every token has the same embedding e ~ N(0, I); inputs are e + sinusoidal positions; W_q, W_k,
  W_v ~ N(0, 1/d); causal attention at the last position (which is all a last-token output reads).
  """
  rng = np.random.default_rng(seed)
  e = rng.standard_normal(d)
  wq, wk, wv = (rng.standard_normal((d, d)) / np.sqrt(d) for _ in range(3))
  x = e[None, :] + sinusoidal_positions(n + 1, d)
  k, v = x @ wk, x @ wv

  def last(m: int) -> np.ndarray:
    weights = _softmax((x[m - 1] @ wq) @ k[:m].T / np.sqrt(d))
    return weights @ v[:m]

  return last(n), last(n + 1)


def random_attention_distances(ns, seeds=range(5), d: int = 64) -> dict[int, dict[str, float]]:
  """Mean (over seeds) L-inf and L1 distances of the two last-token outputs, by n."""
  out = {}
  for n in ns:
    pairs = [random_attention_outputs(int(n), s, d) for s in seeds]
    out[int(n)] = {
      "linf": float(np.mean([np.abs(a - b).max() for a, b in pairs])),
      "l1": float(np.mean([np.abs(a - b).sum() for a, b in pairs])),
    }
  return out
