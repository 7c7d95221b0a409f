"""The config calculator (`tools.info`) without data or compiling."""

from __future__ import annotations

from lime_jax.tools import info


def test_info_needs_no_data_for_a_text_config():
  from lime_jax.experiments import baseline

  got = info.config_info(baseline.get_config("paper"), compile_step=False)  # no shards, no tokenizer here
  assert 1.1e9 < got["params"] < 1.3e9 and got["model"]["vocab_size"] == 50257  # docs/methods.md §1: 1.2B
  assert "config.data" in got["data_not_checked"] and "memory/temp_size_mib" not in got
