"""Fine-tuning figures for notebook 04_finetuning: a metric per run over steps, fine-tuning methods
compared on the test set, and confusion matrices side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import SEQUENTIAL, colour_map, escaped, require_frame, require_numeric, style


def metric_curves(histories: Mapping[str, pd.DataFrame], column: str = "val_loss", title: str | None = None,
                  presentation: bool = False) -> go.Figure:
    """One line per named run: ``column`` of each ``Trainer.metrics`` table against the step (rows
    without a value are skipped), e.g. the validation loss of each fine-tuning method."""
    if not histories:
        raise ValueError("metric_curves needs at least one named metrics table")
    fig = go.Figure()
    colours = colour_map(histories)
    for name, history in histories.items():
        colour = colours[name]
        df = require_frame(history, f"metric_curves[{name!r}]", ["step", column]).dropna(subset=[column])
        fig.add_scatter(x=df["step"], y=df[column], mode="lines+markers", name=escaped(str(name)),
                        line=dict(color=colour),
                        hovertemplate=f"{escaped(str(name))}<br>step %{{x}}<br>{column} %{{y:.4g}}<extra></extra>")
    fig.update_layout(xaxis_title="step", yaxis_title=column.replace("_", " "), height=380)
    return style(fig, title, presentation)


def method_comparison(results: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "macro_f1"),
                      baseline: Mapping[str, float] | None = None, title: str | None = None,
                      presentation: bool = False) -> go.Figure:
    """Grouped bars: one group per row of ``results`` (indexed by method name), one bar per metric
    (values in [0, 1]); ``baseline`` ({metric: value}) draws a dashed line per metric, e.g. the
    majority-class baseline, so a bar below it is worse than always guessing the commonest class."""
    df = require_frame(results, "method_comparison", list(metrics))
    require_numeric(df, "method_comparison", list(metrics))
    names = [escaped(str(n)) for n in df.index]
    colours = colour_map(metrics)
    fig = go.Figure()
    for metric in metrics:
        fig.add_bar(x=names, y=df[metric], name=metric.replace("_", " "), marker_color=colours[metric],
                    text=[f"{v:.2f}" for v in df[metric]], textposition="outside",
                    hovertemplate=f"%{{x}}<br>{metric} %{{y:.3f}}<extra></extra>")
    for metric, value in (baseline or {}).items():
        if metric not in colours:
            raise ValueError(f"method_comparison: baseline metric {metric!r} is not among metrics {list(metrics)}")
        fig.add_hline(y=value, line_dash="dash", line_color=colours[metric],
                      annotation_text=f"baseline {metric.replace('_', ' ')} {value:.2f}",
                      annotation_position="top right" if metric == metrics[0] else "bottom right")
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05], title="score on the test plays"), height=400)
    return style(fig, title, presentation)


def confusion_matrices(confusions: Mapping[str, pd.DataFrame], normalize: bool = True, title: str | None = None,
                       presentation: bool = False) -> go.Figure:
    """Confusion-matrix heatmaps side by side, one per named matrix (rows = true class, columns =
    predicted, as ``lmkit.evaluate.classification_metrics`` returns them). ``normalize`` colours each
    row by its share of the true class (the diagonal is then each class's recall); every cell's text
    shows the count either way."""
    if not confusions:
        raise ValueError("confusion_matrices needs at least one named confusion matrix")
    names = list(confusions)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[escaped(str(n)) for n in names],
                        horizontal_spacing=0.04)
    for c, name in enumerate(names, start=1):
        m = confusions[name]
        if not isinstance(m, pd.DataFrame) or m.shape[0] != m.shape[1] or list(m.index) != list(m.columns):
            raise ValueError(f"confusion_matrices: {name!r} must be a square DataFrame with the same labels on rows "
                             f"(true) and columns (predicted); got {type(m).__name__} {getattr(m, 'shape', '')}")
        counts = m.to_numpy(dtype=float)
        z = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None) if normalize else counts
        labels = [escaped(str(v)) for v in m.index]
        fig.add_trace(go.Heatmap(z=z, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0,
                                 zmax=1 if normalize else None, showscale=c == len(names),
                                 text=counts.astype(int), texttemplate="%{text}",
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{text} passages<br>"
                                               + ("share of the row %{z:.2f}" if normalize else "") + "<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", showticklabels=c == 1, row=1, col=c)
        fig.update_xaxes(title_text="predicted", row=1, col=c)
    fig.update_yaxes(title_text="true", row=1, col=1)
    fig.update_layout(height=360, width=max(420, 300 * len(names)))
    return style(fig, title, presentation)


def retrieval_matrix(table: pd.DataFrame, published: pd.DataFrame | None = None,
                     metrics: Sequence[str] = ("ast_match", "hallucination_rate"), title: str | None = None,
                     presentation: bool = False) -> go.Figure:
    """Gorilla's comparison as bars: one panel per metric, the test-time document along x, one bar per
    model. ``table`` is ``lmkit.retrieval.evaluation_matrix``'s (a (model, document) row index);
    ``published`` (same index, e.g. ``lmkit.retrieval.GORILLA_TFHUB``) adds the paper's figures as
    open diamonds in each model's colour, where it has a value."""
    if not isinstance(table, pd.DataFrame) or table.index.nlevels != 2:
        raise TypeError("retrieval_matrix needs evaluation_matrix's table: a DataFrame indexed by (model, document)")
    require_numeric(table, "retrieval_matrix", list(metrics))
    models = list(dict.fromkeys(table.index.get_level_values(0)))
    documents = list(dict.fromkeys(table.index.get_level_values(1)))
    colours = colour_map(models)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m.replace("_", " ") for m in metrics],
                        horizontal_spacing=0.08)
    for c, metric in enumerate(metrics, start=1):
        for model in models:
            values = [table[metric].get((model, d), np.nan) for d in documents]
            fig.add_bar(x=documents, y=values, name=escaped(str(model)), marker_color=colours[model],
                        legendgroup=str(model), showlegend=c == 1, row=1, col=c,
                        text=[f"{v:.2f}" if np.isfinite(v) else "" for v in values], textposition="outside",
                        hovertemplate=f"{escaped(str(model))}<br>document %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>")
            if published is not None and metric in published.columns:
                paper = [published[metric].get((model, d), np.nan) for d in documents]
                if np.isfinite(paper).any():
                    fig.add_scatter(x=documents, y=paper, mode="markers", name=f"{escaped(str(model))} (paper)",
                                    marker=dict(symbol="diamond-open", size=12, color=colours[model], line_width=2),
                                    legendgroup=f"{model} paper", showlegend=c == 1, row=1, col=c,
                                    hovertemplate=f"Gorilla paper, {escaped(str(model))}<br>document %{{x}}<br>"
                                                  f"{metric} %{{y:.3f}}<extra></extra>")
        fig.update_yaxes(range=[0, 1.1], row=1, col=c)
        fig.update_xaxes(title_text="document in the prompt at test time", row=1, col=c)
    fig.update_layout(barmode="group", height=420)
    return style(fig, title, presentation)
