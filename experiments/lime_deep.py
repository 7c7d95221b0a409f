"""LIMe vs the LLaMA baseline in the deep-and-narrow setting (docs/methods.md §1 'deep', §2).

  --config=experiments/lime_deep.py[:PRESET[,ARM]]

PRESET: default (CPU, minutes; the README quickstart), tiny (seconds, tests), paper32 / paper64 /
paper128 (docs/methods.md §1 deep shapes: d_model 256, FFN 1024, 8 heads, 5k steps; GPT-2 BPE on parquet
shards at
seq 2048: set data.tokenizer, data.text.files, data.text.eval_files, see presets.paper_text_data).
ARM: lime (default; kv router, v2), baseline (plain LLaMA), or a v1 router: static, dynamic, top_p.
The same arm can also be chosen with --config.model.topology=plain|lime and --config.model.lime.router.
Both arms of a comparison share data, steps and seed.
"""

from lime_jax.config import default_config
from lime_jax.config.presets import apply_preset, deep_narrow_cpu, deep_narrow_tiny, paper_deep_text

# default: deep and narrow on the baseline's CPU task (16 x 64, as many parameters as baseline.py's 4 x 128).
PRESETS = {
  "default": deep_narrow_cpu,
  "tiny": deep_narrow_tiny,
  "paper32": paper_deep_text(32),
  "paper64": paper_deep_text(64),
  "paper128": paper_deep_text(128),
}


def _arm(c, arm: str) -> None:
  if arm == "baseline":
    c.model.topology = "plain"
    return
  routers = {"lime": "kv", "kv": "kv", "static": "static", "dynamic": "dynamic", "top_p": "top_p"}
  if arm not in routers:
    raise ValueError(
      f"Unknown arm {arm!r} for experiments/lime_deep.py; use baseline, lime, "
      "static, dynamic or top_p, e.g. --config=experiments/lime_deep.py:default,baseline."
    )
  c.model.topology = "lime"
  c.model.lime.router = routers[arm]


def get_config(spec: str | None = None):
  preset, _, arm = (spec or "default").partition(",")
  config = apply_preset(default_config(), PRESETS, preset, "experiments/lime_deep.py")
  _arm(config, arm or "lime")
  return config
