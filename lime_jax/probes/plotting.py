"""Draws the plot specs probes return (one PNG each), and overlays the same plot across runs.

A spec is a dict: `name` (file stem), `title`, `xlabel`, `ylabel`, optional `logx` / `logy` / `ylim`,
`hlines` / `vlines` ([{x or y, label}]), and either `series` ([{label, x, y, style?, y_lo?, y_hi?}];
y_lo / y_hi draw a band), or `kind='hist'` with `values`, or `kind='heatmap'` with `data` [rows, cols].
"""

from __future__ import annotations

import io

import numpy as np

from lime_jax.runtime import fileio

_FIGSIZE = (6.0, 4.0)
_DPI = 90


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _finite_positive(values, floor: float) -> np.ndarray:
  """For log axes: non-positive values (exact collapse) are drawn at `floor`."""
  v = np.asarray([np.nan if x is None else x for x in values], np.float64)
  return np.where(v > 0, v, floor)


def _draw_series(ax, spec: dict, series: list[dict]) -> None:
  logy = spec.get("logy", False)
  ys = [y for s in series for y in s["y"] if y is not None and y > 0]
  floor = (min(ys) / 10 if ys else 1e-8) if logy else None
  for s in series:
    y = _finite_positive(s["y"], floor) if logy else np.asarray(s["y"], np.float64)
    style = s.get("style", "-")
    marker = s.get("marker", "o" if style == "o" else ".")
    linestyle = s.get("linestyle", "" if style == "o" else style)
    line = ax.plot(
      s["x"], y, linestyle=linestyle or "none", marker=marker, label=s["label"], color=s.get("color")
    )[0]
    if "y_lo" in s and "y_hi" in s:
      lo = _finite_positive(s["y_lo"], floor) if logy else s["y_lo"]
      hi = _finite_positive(s["y_hi"], floor) if logy else s["y_hi"]
      ax.fill_between(s["x"], lo, hi, alpha=0.15, color=line.get_color())
  if logy:
    ax.set_yscale("log")
    if any(y is not None and y <= 0 for s in series for y in s["y"]):
      ax.axhline(floor, color="grey", lw=0.5, ls=":")
      ax.text(ax.get_xlim()[0], floor, " exactly 0", fontsize=7, va="bottom", color="grey")


def render(spec: dict, out_dir: str, series: list[dict] | None = None, title_suffix: str = "") -> str:
  """Draws one spec (or `series` overriding its own) to OUT_DIR/<name>.png; returns the path."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=_FIGSIZE)
  kind = spec.get("kind", "line")
  if kind == "hist":
    values = np.asarray(spec["values"], np.float64)
    if values.size:
      ax.hist(values, bins=min(60, max(10, int(values.max() - values.min() + 1))), color="tab:blue")
  elif kind == "heatmap":
    image = ax.imshow(np.asarray(spec["data"], np.float64), aspect="auto", origin="lower", cmap="viridis")
    fig.colorbar(image, ax=ax)
  else:
    _draw_series(ax, spec, series if series is not None else spec["series"])
  for h in spec.get("hlines", []):
    ax.axhline(h["y"], color="red", ls=":", lw=1, label=h.get("label") or None)
  for v in spec.get("vlines", []):
    ax.axvline(v["x"], color="grey", ls="--", lw=0.8, label=v.get("label") or None)
  if spec.get("logx"):
    ax.set_xscale("log")
  if spec.get("ylim") and not spec.get("logy"):
    ax.set_ylim(*spec["ylim"])
  ax.set_title(spec.get("title", spec["name"]) + title_suffix, fontsize=9)
  ax.set_xlabel(spec.get("xlabel", ""))
  ax.set_ylabel(spec.get("ylabel", ""), fontsize=8)
  if kind == "line" and ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, loc="best")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fileio.makedirs(out_dir)
  path = fileio.join(out_dir, f"{spec['name']}.png")
  buffer = io.BytesIO()  # through epath, so that out_dir may be a gs:// URL
  fig.savefig(buffer, format="png", dpi=_DPI)
  plt.close(fig)
  fileio.write_bytes(path, buffer.getvalue())
  return path


LINE_STYLES = ("-", "--", ":", "-.")  # also sweep.plot_curves: one per seed
_MARKERS = (".", "o", "s", "^", "v", "D", "x", "+")


def overlay_series(specs_by_run: dict[str, dict]) -> list[dict]:
  """The series of one plot across runs: the run name prefixes each label, each run has its colour and
  the series within a run (e.g. fp32 / bf16) differ by line style and marker, the same in every run."""
  series = []
  for i, (run, spec) in enumerate(specs_by_run.items()):
    for j, s in enumerate(spec["series"]):
      linestyle = "" if s.get("style") == "o" else LINE_STYLES[j % len(LINE_STYLES)]
      series.append(
        {
          **s,
          "label": f"{run}: {s['label']}",
          "color": f"C{i % 10}",
          "linestyle": linestyle,
          "marker": _MARKERS[j % len(_MARKERS)],
        }
      )
  return series


def render_compare(specs_by_run: dict[str, dict], out_dir: str) -> str | None:
  """Overlays one plot across runs (`overlay_series`); heatmaps and histograms are not overlaid (None)."""
  first = next(iter(specs_by_run.values()))
  if first.get("kind", "line") != "line":
    return None
  return render(first, out_dir, series=overlay_series(specs_by_run), title_suffix=" (compare)")
