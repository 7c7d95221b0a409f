"""LIMe vs the LLaMA baseline in the deep-and-narrow setting (SPEC §1 'deep', §2).

  --config=experiments/lime_deep.py[:PRESET[,ARM]]

PRESET: default (CPU, minutes; the README quickstart), tiny (seconds, tests), paper32 / paper64 /
paper128 (SPEC §1 deep shapes: d_model 256, FFN 1024, 8 heads, 5k steps, on a tfds text corpus).
ARM: lime (default; kv router, v2), baseline (plain LLaMA), or a v1 router: static, dynamic, top_p.
The same arm can also be chosen with --config.model.topology=plain|lime and --config.model.lime.router.
Both arms of a comparison share data, steps and seed.
"""

from lime_jax.config import default_config
from lime_jax.presets import apply_preset, paper_deep_model


def _default(c):
  # Deep and narrow on the baseline's CPU task (2 operators mod 5, chain of thought): 16 x 64 has the
  # parameters of baseline.py's 4 x 128 default, so both train in a few minutes on 2 cores.
  c.model.update(num_layers=16, d_model=64, num_heads=4, ffn_dim=256)
  c.data.update(task="arithmetic", seq_len=16)
  c.data.arithmetic.update(num_operators=2, cot=True, modulus=5, test_fraction=0.1)
  c.train.update(batch_size=64, num_steps=1000, learning_rate=3e-3, warmup_steps=100,
                 log_every=100, checkpoint_every=500, eval_every=500)
  c.eval.num_examples = 1024


def _tiny(c):
  _default(c)
  c.model.update(num_layers=4, d_model=32, num_heads=2, ffn_dim=64)
  c.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, checkpoint_every=2)
  c.eval.update(num_examples=16, batch_size=8)


def _paper(num_layers):
  def preset(c):
    paper_deep_model(c, num_layers)
    c.data.task = "text"
    c.data.loss_scope = "all"
  return preset


PRESETS = {"default": _default, "tiny": _tiny, "paper32": _paper(32), "paper64": _paper(64),
           "paper128": _paper(128)}


def _arm(c, arm: str) -> None:
  if arm == "baseline":
    c.model.topology = "plain"
    return
  routers = {"lime": "kv", "kv": "kv", "static": "static", "dynamic": "dynamic", "top_p": "top_p"}
  if arm not in routers:
    raise ValueError(f"Unknown arm {arm!r} for experiments/lime_deep.py; use baseline, lime, "
                     "static, dynamic or top_p, e.g. --config=experiments/lime_deep.py:default,baseline.")
  c.model.topology = "lime"
  c.model.lime.router = routers[arm]


def get_config(spec: str | None = None):
  preset, _, arm = (spec or "default").partition(",")
  config = apply_preset(default_config(), PRESETS, preset, "experiments/lime_deep.py")
  _arm(config, arm or "lime")
  return config
