"""Comparison overlays tell the series of one run apart."""

from __future__ import annotations

from lime_jax.probes import plotting


def test_overlay_distinguishes_series_within_a_run():
  spec = lambda: {"name": "p", "series": [{"label": l, "x": [1], "y": [1.0]} for l in ("fp32", "bf16")]}
  series = plotting.overlay_series({"base": spec(), "lime": spec()})
  looks = [(s["color"], s["linestyle"], s["marker"]) for s in series]
  assert len(set(looks)) == 4  # every (run, series) pair draws differently
  assert looks[0][0] == looks[1][0] != looks[2][0]  # colour = run
  assert looks[0][1:] != looks[1][1:] and looks[0][1:] == looks[2][1:]  # style = series, same in every run
  assert [s["label"] for s in series] == ["base: fp32", "base: bf16", "lime: fp32", "lime: bf16"]
