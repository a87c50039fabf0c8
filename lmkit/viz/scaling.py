"""The scaling figure for notebook 06_scaling: validation loss against model size, data or compute
on log-log axes, with a fitted ``lmkit.scaling.PowerLaw`` (Kaplan et al. 2020, "Scaling Laws for
Neural Language Models")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..scaling import SYMBOLS, PowerLaw
from .common import COLORWAY, escaped, require_frame, require_numeric, style

_SCALING_AXES = {
    "parameters": "parameters N (non-embedding)",
    "train_tokens": "training tokens D",
    "train_flops": "training compute C (FLOPs)",
    "val_loss": "validation loss (nats per token)",
    "bits_per_char": "bits per character",
}


def scaling_plot(runs: pd.DataFrame, x: str = "parameters", y: str = "val_loss", fit: PowerLaw | None = None,
                 title: str | None = None, presentation: bool = False) -> go.Figure:
    """One marker per run (``lmkit.runs.sweep``'s table) on log-log axes, ``y`` against ``x``, and the fitted
    ``lmkit.scaling.PowerLaw`` as a dashed line whose legend entry is its formula. A power law is a
    straight line on these axes; its slope is -alpha. Hover shows each run's name and parameters.
    Pass only finished runs (``lmkit.scaling.usable_runs``): log axes need positive values."""
    df = require_frame(runs, "scaling_plot", [x, y])
    require_numeric(df, "scaling_plot", [x, y])
    bad = df.index[~((df[x] > 0) & (df[y] > 0) & np.isfinite(df[x]) & np.isfinite(df[y]))]
    if len(bad):
        raise ValueError(f"scaling_plot: log axes need finite {x!r} and {y!r} > 0; rows {list(bad)[:10]} are not "
                         "(failed runs? lmkit.scaling.usable_runs drops them)")
    if fit is not None and not isinstance(fit, PowerLaw):
        raise TypeError(f"scaling_plot: fit must be a PowerLaw (lmkit.scaling.fit_power_law) or None; "
                        f"got {type(fit).__name__}")
    names = [escaped(str(n)) for n in (df["run"] if "run" in df else df.index)]
    params = df["parameters"] if "parameters" in df else pd.Series(np.nan, index=df.index)
    fig = go.Figure(go.Scatter(
        x=df[x], y=df[y], mode="markers", name="runs", marker=dict(size=10, color=COLORWAY[0]),
        customdata=np.array(list(zip(names, params.tolist(), strict=True)), dtype=object),
        hovertemplate=f"%{{customdata[0]}}<br>parameters %{{customdata[1]:,}}<br>{escaped(x)} %{{x:.3g}}"
                      f"<br>{escaped(y)} %{{y:.4g}}<extra></extra>"))
    if fit is not None:
        xs = np.geomspace(df[x].min() / 1.5, df[x].max() * 1.5, 100)  # a little beyond the runs on each side
        fig.add_scatter(x=xs, y=fit(xs), mode="lines", name=f"{fit.formula(SYMBOLS.get(x, x))} (R² {fit.r2:.3f})",
                        line=dict(color=COLORWAY[1], dash="dash"), hoverinfo="skip")
    fig.update_xaxes(type="log", title_text=_SCALING_AXES.get(x, x))
    fig.update_yaxes(type="log", title_text=_SCALING_AXES.get(y, y))
    fig.update_layout(height=420, legend=dict(yanchor="top", y=0.99, xanchor="right", x=0.99))
    return style(fig, title, presentation)


_GROWTH_AXES = {"n_embd": "width n_embd", "n_layer": "depth n_layer", "block_size": "context block_size",
                "processes": "processes N"}


def memory_growth_plot(growth: pd.DataFrame, device_gb: float | None = None, title: str | None = None,
                       presentation: bool = False) -> go.Figure:
    """The planned memory per process (``lmkit.footprint.memory_growth``'s table) as each setting
    grows: one panel per setting, one line per way of training, log axes. ``device_gb`` draws a
    device's memory as a dotted line: a way whose line stays under it fits."""
    df = require_frame(growth, "memory_growth_plot", ["setting", "value", "way", "total"])
    require_numeric(df, "memory_growth_plot", ["value", "total"])
    settings = list(dict.fromkeys(df["setting"]))
    fig = make_subplots(rows=1, cols=len(settings), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[_GROWTH_AXES.get(s, s) for s in settings])
    ways, shown = list(dict.fromkeys(df["way"])), set()
    for col, setting in enumerate(settings, start=1):
        part = df[df["setting"] == setting]
        for i, way in enumerate(ways):
            line = part[part["way"] == way]
            if not len(line):
                continue
            fig.add_scatter(x=line["value"], y=line["total"] / 1024, mode="lines+markers", name=escaped(way),
                            legendgroup=way, showlegend=way not in shown,
                            line=dict(color=COLORWAY[i % len(COLORWAY)]), row=1, col=col,
                            hovertemplate=f"{escaped(way)}<br>{escaped(setting)} %{{x}}<br>%{{y:.3g}} GB<extra></extra>")
            shown.add(way)
        if device_gb is not None:
            fig.add_hline(y=device_gb, line=dict(color="grey", dash="dot"), row=1, col=col,
                          annotation_text=f"{device_gb:g} GB device" if col == 1 else None,
                          annotation_position="top left")
        fig.update_xaxes(type="log", row=1, col=col)
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="GB per process (planned)", row=1, col=1)
    fig.update_layout(height=400)
    return style(fig, title, presentation)
