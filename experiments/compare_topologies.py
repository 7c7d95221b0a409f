"""Residual topologies compared at matched data, steps and seed (docs/methods.md §3; README "Residual
topologies").

  --config=experiments/compare_topologies.py[:PRESET[,ARM]]

PRESET: default (CPU: 16 layers x 64, 2-operator CoT arithmetic mod 5, 1000 steps, a few minutes per
arm), tiny (seconds, tests), paper32 / paper64 (docs/methods.md §1 deep shapes on a tfds text corpus).
ARM selects the topology, all else equal: plain, lime (kv v2), denseformer, hyper_connections (dynamic,
n = 4), value_residual (lambda fixed 0.5), and the variants hc_static, value_residual_learned,
denseformer_k2p2 (dilation 2, period 2).

Learning rates: topology parameters live in the optimizer's `router` group (no weight decay,
lr x train.router_lr_multiplier). LIMe keeps the paper's 10x. DenseFormer, Hyper-Connections and the
value-residual lambdas train at the model's lr (multiplier 1), as in their reference code
(epfml/DenseFormer; corl-team/lime `hc.py` and `train_utils.py`); unlike those, their weights get no decay.

`python -m lime_jax.tools.compare --config=experiments/compare_topologies.py --workdir=DIR` runs every arm and
writes one table.
"""

from lime_jax.config import default_config
from lime_jax.config.presets import apply_preset, deep_narrow_cpu, deep_narrow_tiny, paper_deep_text

ARMS = ("plain", "lime", "denseformer", "hyper_connections", "value_residual")


def _tiny(c):
  deep_narrow_tiny(c)
  c.train.eval_every = 0


# default: the setting of experiments/lime_deep.py:default (deep and narrow: cross-layer methods matter).
PRESETS = {
  "default": deep_narrow_cpu,
  "tiny": _tiny,
  "paper32": paper_deep_text(32),
  "paper64": paper_deep_text(64),
}


def _arm(c, arm: str) -> None:
  """Sets the topology (and its router lr multiplier) of one arm."""
  m = c.model
  topology = {
    "hc_static": "hyper_connections",
    "value_residual_learned": "value_residual",
    "denseformer_k2p2": "denseformer",
  }.get(arm, arm)
  if topology not in ARMS:
    raise ValueError(
      f"Unknown arm {arm!r} for experiments/compare_topologies.py; use one of "
      f"{', '.join(ARMS)}, hc_static, value_residual_learned or denseformer_k2p2, e.g. "
      "--config=experiments/compare_topologies.py:default,denseformer."
    )
  m.topology = topology
  c.train.router_lr_multiplier = 10.0 if topology == "lime" else 1.0
  if arm == "hc_static":
    m.hyper_connections.dynamic = False
  if arm == "value_residual_learned":
    m.value_residual.learnable = True
  if arm == "denseformer_k2p2":
    m.denseformer.update(dilation=2, period=2)


def get_config(spec: str | None = None):
  preset, _, arm = (spec or "default").partition(",")
  config = apply_preset(default_config(), PRESETS, preset, "experiments/compare_topologies.py")
  _arm(config, arm or "plain")
  return config
