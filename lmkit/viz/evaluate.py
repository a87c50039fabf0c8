"""Evaluation figures for notebook 05_evaluation: the reliability diagram of
``lmkit.evaluate.calibration`` (Guo et al. 2017, "On Calibration of Modern Neural Networks"),
robustness to character noise, and one metric across runs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import (
    COLORWAY,
    PALETTE,
    colour_map,
    escaped,
    require_frame,
    require_numeric,
    require_unique,
    style,
)

_RELIABILITY_COLUMNS = ("lower", "upper", "count", "confidence", "accuracy")


def reliability_diagram(bins: pd.DataFrame, ece: float, title: str | None = None,
                        presentation: bool = False) -> go.Figure:
    """Accuracy per confidence bin as bars (``lmkit.evaluate.calibration``'s ``bins``: lower,
    upper, count, confidence, accuracy), the diagonal of perfect calibration, and each bin's mean
    confidence as a marker. A bar below the diagonal is overconfidence, above it underconfidence;
    the ECE (their count-weighted mean gap) is in the legend and the default title. Empty bins
    (count 0) are left out."""
    df = require_frame(bins, "reliability_diagram", _RELIABILITY_COLUMNS)
    require_numeric(df, "reliability_diagram", _RELIABILITY_COLUMNS)
    if isinstance(ece, bool) or not isinstance(ece, (int, float, np.floating)) or not 0 <= ece <= 1:
        raise ValueError(f"reliability_diagram: ece={ece!r} must be a number in [0, 1] (calibration's 'ece')")
    df = df[df["count"] > 0]
    if df.empty:
        raise ValueError("reliability_diagram: every bin is empty (count 0); score at least one prediction")
    centres, widths = (df["lower"] + df["upper"]) / 2, df["upper"] - df["lower"]
    fig = go.Figure()
    fig.add_bar(x=centres, y=df["accuracy"], width=widths, name=f"accuracy (ECE {ece:.3f})",
                marker=dict(color=COLORWAY[0], line=dict(color="white", width=1)), customdata=df["count"],
                hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.3f}<br>%{customdata:,} predictions"
                              "<extra></extra>")
    fig.add_scatter(x=df["confidence"], y=df["confidence"], mode="markers", name="mean confidence",
                    marker=dict(color=COLORWAY[1], size=8, symbol="line-ew-open", line=dict(width=3)),
                    hovertemplate="mean confidence %{y:.3f}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line=dict(color=PALETTE[0], dash="dash"), hoverinfo="skip")
    fig.update_xaxes(range=[0, 1], title_text="confidence (largest predicted probability)")
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy")
    fig.update_layout(height=420, width=520, bargap=0, legend=dict(yanchor="top", y=0.99, xanchor="left", x=0.01))
    return style(fig, title if title is not None else f"Reliability diagram — ECE {ece:.3f}", presentation)


def robustness_plot(curves: Mapping[str, pd.DataFrame] | pd.DataFrame, metric: str = "accuracy",
                    baseline: float | None = None, title: str | None = None,
                    presentation: bool = False) -> go.Figure:
    """One line per named model: ``metric`` against the noise rate (``lmkit.evaluate.robustness_curve``'s
    tables; a single DataFrame is one unnamed curve). ``baseline`` draws a dashed line, e.g. the
    majority-class accuracy: where a curve meets it, the classifier has stopped reading the text."""
    if isinstance(curves, pd.DataFrame):
        curves = {"model": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("robustness_plot needs a DataFrame or a non-empty {name: DataFrame} of robustness curves")
    fig = go.Figure()
    colours = colour_map(curves)
    for name, curve in curves.items():
        who = f"robustness_plot[{name!r}]"
        df = require_frame(curve, who, ["rate", metric])
        require_numeric(df, who, ["rate", metric])
        df = df.sort_values("rate")
        fig.add_scatter(x=df["rate"], y=df[metric], mode="lines+markers", name=escaped(str(name)),
                        line=dict(color=colours[name]),
                        hovertemplate=f"{escaped(str(name))}<br>noise rate %{{x:.2f}}<br>{escaped(metric)} %{{y:.3f}}"
                                      "<extra></extra>")
    if baseline is not None:
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float, np.floating)) or not np.isfinite(baseline):
            raise ValueError(f"robustness_plot: baseline={baseline!r} must be a finite number or None")
        fig.add_hline(y=baseline, line_dash="dash", line_color=PALETTE[0],
                      annotation_text=f"baseline {baseline:.2f}", annotation_position="bottom right")
    fig.update_xaxes(title_text="character noise rate (share of characters corrupted)", tickformat=".0%")
    fig.update_yaxes(title_text=metric.replace("_", " "))
    fig.update_layout(height=400)
    return style(fig, title, presentation)


def run_comparison(table: pd.DataFrame, metric: str, by: str = "run", title: str | None = None,
                   presentation: bool = False) -> go.Figure:
    """A horizontal bar per row of ``table``: its ``metric`` (e.g. ``bits_per_char``), labelled by
    the ``by`` column, first row at the top. Rows without a value (NaN: a run that never evaluated)
    are left out and named in a note under the plot."""
    df = require_frame(table, "run_comparison", [by, metric])
    require_numeric(df, "run_comparison", [metric])
    require_unique(df[by].astype(str).tolist(), "run_comparison", f"the {by!r} column")
    missing = df[by][df[metric].isna()].astype(str).tolist()
    df = df.dropna(subset=[metric])
    if df.empty:
        raise ValueError(f"run_comparison: no row has a value for {metric!r}; every run is NaN")
    names = [escaped(str(n)) for n in df[by]]
    fig = go.Figure(go.Bar(
        x=df[metric], y=names, orientation="h", marker_color=COLORWAY[0], name=metric.replace("_", " "),
        text=[f"{v:.3g}" for v in df[metric]], textposition="outside",
        hovertemplate=f"%{{y}}<br>{escaped(metric)} %{{x:.4g}}<extra></extra>"))
    if missing:
        fig.add_annotation(text=escaped(f"no {metric}: {', '.join(missing)}"), showarrow=False, xref="paper",
                           yref="paper", x=0, y=-0.2, xanchor="left", yanchor="top")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text=metric.replace("_", " "))
    fig.update_layout(height=140 + 32 * len(df), showlegend=False, margin=dict(b=90 if missing else None))
    return style(fig, title, presentation)
