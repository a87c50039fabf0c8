"""Training figures for notebook 03_training: the learning-rate schedule, loss curves, and the
gradient-norm and update-ratio diagnostics of ``lmkit.diagnostics``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..trainer import lr_at
from .common import COLORWAY, PALETTE, colour_map, require_frame, require_numeric, style


def lr_schedule(config, title: str = "Learning-rate schedule", presentation: bool = False) -> go.Figure:
    """The learning rate of every optimizer step of a ``TrainConfig``, warm-up shaded."""
    steps = np.arange(config.max_steps)
    fig = go.Figure(go.Scatter(x=steps + 1, y=[lr_at(int(s), config) for s in steps], mode="lines", name="lr",
                               hovertemplate="step %{x}<br>lr %{y:.3g}<extra></extra>"))
    if config.warmup_steps:
        fig.add_vrect(x0=0, x1=config.warmup_steps, fillcolor=PALETTE[4], opacity=0.25, line_width=0,
                      annotation_text="warm-up", annotation_position="top left")
    fig.update_layout(xaxis_title="step", yaxis_title="learning rate", height=320)
    return style(fig, title, presentation)


def loss_curves(metrics: pd.DataFrame, title: str = "Loss during training", presentation: bool = False,
                smooth: int = 20) -> go.Figure:
    """Training loss per step (raw, faint, and a ``smooth``-step running mean) and validation loss at each
    evaluation, from ``Trainer.metrics`` or ``lmkit.runs.load_metrics``."""
    df = require_frame(metrics, "loss_curves", ["step"])
    fig = go.Figure()
    if "train_loss" in df and df["train_loss"].notna().any():
        train = df.dropna(subset=["train_loss"])
        fig.add_scatter(x=train["step"], y=train["train_loss"], mode="lines", name="train (per step)",
                        line=dict(color=COLORWAY[0], width=1), opacity=0.3)
        fig.add_scatter(x=train["step"], y=train["train_loss"].rolling(smooth, min_periods=1).mean(),
                        mode="lines", name=f"train ({smooth}-step mean)", line=dict(color=COLORWAY[0]))
    if "val_loss" in df and df["val_loss"].notna().any():
        val = df.dropna(subset=["val_loss"])
        fig.add_scatter(x=val["step"], y=val["val_loss"], mode="lines+markers", name="validation",
                        line=dict(color=COLORWAY[1]))
    if not fig.data:
        raise ValueError("loss_curves needs a 'train_loss' or 'val_loss' column with values; got columns "
                         f"{list(df.columns)}")
    fig.update_layout(xaxis_title="step", yaxis_title="loss (nats per token)", height=380)
    return style(fig, title, presentation)


HEALTHY_UPDATE_RATIO = 1e-3  # ‖Δθ‖/‖θ‖ per step that Adam-trained transformers typically show


def training_diagnostics(diagnostics: pd.DataFrame, title: str = "Network health during training",
                         presentation: bool = False) -> go.Figure:
    """Two panels from ``lmkit.diagnostics.Diagnostics.frame()``: the gradient norm of each layer and its
    update-to-data ratio (log scale, the healthy ~1e-3 marked) against the step, a line per layer."""
    df = require_frame(diagnostics, "training_diagnostics", ["step", "layer", "grad_norm", "update_ratio"])
    require_numeric(df, "training_diagnostics", ["step", "grad_norm", "update_ratio"])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("gradient norm (after clipping)", "update / weight ratio per step"))
    layers = list(dict.fromkeys(df["layer"]))  # model order
    colours = colour_map(layers)
    for layer in layers:
        rows = df[df["layer"] == layer]
        for col, column in ((1, "grad_norm"), (2, "update_ratio")):
            fig.add_scatter(x=rows["step"], y=rows[column], mode="lines", name=layer, legendgroup=layer,
                            showlegend=col == 1, line=dict(color=colours[layer]), row=1, col=col,
                            hovertemplate=f"{layer}<br>step %{{x}}<br>%{{y:.3g}}<extra></extra>")
    fig.add_hline(y=HEALTHY_UPDATE_RATIO, line_dash="dash", line_color="grey", row=1, col=2,
                  annotation_text="~1e-3: healthy", annotation_position="bottom right")
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=400, legend_title_text="layer")
    return style(fig, title, presentation)
