"""Plotly figure builders for the notebooks.

Every function here builds a ``plotly.graph_objects.Figure`` and RETURNS it; none displays it
(no ``fig.show()``), so a notebook cell shows the figure by ending with it, and a script can
``fig.write_html(path)`` (plotly.js is embedded by default, no CDN) or ``fig.write_image(path)``.

All figures share one look through ``style``: the Okabe–Ito palette (Okabe & Ito 2008, "Color
Universal Design"; distinguishable with the common forms of colour blindness), a white template,
and a ``presentation=True`` option with larger fonts for a projector. Sequential data uses
"Cividis" (Nuñez, Anderton & Renslow 2018), designed to read the same with and without colour
vision deficiency.

Sections: data figures for notebook 01_data (corpus overview, cleaning report, near-duplicate
similarity heatmap, train/val split, tokenizer comparison, Zipf plot); training figures (learning-rate
schedule, loss curves); fine-tuning figures (metric curves per run, method comparison,
confusion matrices); evaluation figures for notebook 05_evaluation (reliability diagram, robustness
to character noise, one metric across runs); attention figures (one map, model view, head view, an
explorer that works in a static HTML file, rollout, head scores, evolution over training, overviews
of long inputs) and export (``to_html``: one self-contained page; ``to_png``: kaleido with the
system's Chromium).

Inputs are checked at the boundary: a missing column or a wrong shape is a ``ValueError`` that
says what was expected and what came.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape as _escape_html
from html import unescape as _unescape_html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .files import write_bytes_atomic
from .scaling import SYMBOLS, PowerLaw

# Okabe–Ito, in their published order.
PALETTE: tuple[str, ...] = (
    "#000000",  # black
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
)
# Categorical traces take colours in this order: black is kept for last (it reads as "text"/"axis"
# and a black fitted line would look like a reference line), yellow late (weak on white).
COLORWAY: tuple[str, ...] = tuple(PALETTE[i] for i in (5, 1, 3, 6, 2, 7, 4, 0))
SEQUENTIAL = "Cividis"

FONT_SIZE = 12  # notebook reading distance
PRESENTATION_FONT_SIZE = 18  # readable from the back of a classroom
_SCALE = PRESENTATION_FONT_SIZE / FONT_SIZE


def _font_size(presentation: bool, base: float = FONT_SIZE) -> int:
    return round(base * _SCALE) if presentation else round(base)


def style(fig: go.Figure, title: str | None = None, presentation: bool = False) -> go.Figure:
    """Apply the shared look to ``fig`` (in place) and return it.

    White template, the Okabe–Ito colourway, base font 12 px (18 px with ``presentation=True``,
    titles and subplot titles scaled alike). ``title`` replaces the figure title when given.
    """
    size = _font_size(presentation)
    fig.update_layout(
        template="plotly_white",
        colorway=list(COLORWAY),
        font=dict(size=size),
        hoverlabel=dict(font=dict(size=size)),
        legend=dict(font=dict(size=size)),
        title=dict(font=dict(size=size + 4), x=0.0, xanchor="left"),
    )
    if title is not None:
        fig.update_layout(title_text=title)
    fig.update_annotations(font_size=size + 1)  # subplot titles are annotations
    return fig


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _require_frame(df: Any, who: str, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{who} needs a pandas DataFrame with columns {list(columns)}; got a {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{who} needs a DataFrame with columns {list(columns)}; missing {missing}, got columns {list(df.columns)}"
        )
    if df.empty:
        raise ValueError(f"{who} needs at least one row; got an empty DataFrame")
    return df


def _require_numeric(df: pd.DataFrame, who: str, columns: Sequence[str]) -> None:
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            raise ValueError(f"{who}: column {c!r} must be numeric; got dtype {df[c].dtype}")


def _require_unique(values: Sequence[Any], who: str, what: str) -> None:
    dupes = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"{who}: {what} must be unique; these repeat: {dupes[:10]}")


def _names(items: Iterable[Any], who: str, what: str) -> list[str]:
    if isinstance(items, str) or not isinstance(items, Iterable):
        raise TypeError(f"{who}: {what} must be a list of document names (or Documents); got {type(items).__name__}")
    names = [getattr(x, "name", x) for x in items]  # lmkit.data.Document objects carry .name
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{who}: {what} must hold str names or Documents; got {bad[:5]!r}")
    _require_unique(names, who, what)
    return names


def _html(text: str) -> str:
    """Escape text for plotly's hover labels, which read ``<...>`` as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _signed_share(removed_share: float) -> str:
    """The change a cleaning step made, as a signed percentage ("−1.25%")."""
    if removed_share > 0:
        return f"−{removed_share:.2%}"
    return f"+{-removed_share:.2%}" if removed_share < 0 else "0%"


def _colour_map(keys: Iterable[Any]) -> dict[Any, str]:
    return {k: COLORWAY[i % len(COLORWAY)] for i, k in enumerate(keys)}


# ---------------------------------------------------------------------------------------------
# Data figures (notebook 01_data)
# ---------------------------------------------------------------------------------------------

def corpus_overview(
    table: pd.DataFrame, title: str = "Characters per document", presentation: bool = False
) -> go.Figure:
    """Characters per document as horizontal bars, longest on top, coloured by genre.

    ``table`` has columns ``name``, ``genre``, ``characters`` and optionally ``edition`` (shown on
    hover). One trace per genre, so the legend toggles genres.
    """
    who = "corpus_overview"
    _require_frame(table, who, ["name", "genre", "characters"])
    _require_numeric(table, who, ["characters"])
    _require_unique(list(table["name"]), who, "names")
    df = table.sort_values("characters", ascending=False, kind="stable").copy()
    df["genre"] = df["genre"].fillna("unknown").astype(str)
    edition = df["edition"].fillna("").astype(str) if "edition" in df.columns else pd.Series("", index=df.index)
    df["_edition"] = edition
    colours = _colour_map(sorted(df["genre"].unique()))
    fig = go.Figure()
    for genre, part in df.groupby("genre", sort=True):
        fig.add_trace(go.Bar(
            x=part["characters"], y=part["name"].astype(str), orientation="h", name=genre,
            marker_color=colours[genre], customdata=np.stack([part["genre"], part["_edition"]], axis=1),
            hovertemplate="%{y}<br>%{customdata[0]} %{customdata[1]}<br>%{x:,} characters<extra></extra>",
        ))
    # Horizontal bars stack categories bottom-up: list the smallest first so the largest is on top.
    order = df["name"].astype(str).tolist()[::-1]
    row = _font_size(presentation, 10) + 4
    fig.update_layout(
        height=max(320, row * len(df) + 140), barmode="overlay", bargap=0.15,
        xaxis_title="characters", yaxis=dict(title="", categoryorder="array", categoryarray=order,
                                              tickfont=dict(size=_font_size(presentation, 10)), automargin=True),
        legend_title_text="genre",
    )
    return style(fig, title, presentation)


def cleaning_report(
    steps: pd.DataFrame, title: str = "Characters before and after each cleaning step", presentation: bool = False
) -> go.Figure:
    """Characters before/after each cleaning step as grouped bars; the share removed is printed on
    the "after" bars (steps often remove <1 %, invisible as bar height), and the hover adds the
    documents each step changed and dropped.

    ``steps`` has columns ``step``, ``documents_changed``, ``characters_before``,
    ``characters_after``, ``documents_dropped``, one row per step in pipeline order.
    """
    who = "cleaning_report"
    numeric = ["documents_changed", "characters_before", "characters_after", "documents_dropped"]
    _require_frame(steps, who, ["step", *numeric])
    _require_numeric(steps, who, numeric)
    step = steps["step"].astype(str)
    before = steps["characters_before"].to_numpy(dtype=float)
    after = steps["characters_after"].to_numpy(dtype=float)
    removed = before - after
    share = np.divide(removed, before, out=np.zeros_like(removed), where=before > 0)
    custom = np.stack([before, after, removed, share,
                       steps["documents_changed"].to_numpy(), steps["documents_dropped"].to_numpy()], axis=1)
    hover = ("%{x}<br>before: %{customdata[0]:,.0f} characters<br>after: %{customdata[1]:,.0f}"
             "<br>removed: %{customdata[2]:,.0f} (%{customdata[3]:.2%})"
             "<br>documents changed: %{customdata[4]:,.0f}<br>documents dropped: %{customdata[5]:,.0f}"
             "<extra>%{fullData.name}</extra>")
    fig = go.Figure([
        go.Bar(x=step, y=before, name="before", marker_color=COLORWAY[2], customdata=custom, hovertemplate=hover),
        go.Bar(x=step, y=after, name="after", marker_color=COLORWAY[0], customdata=custom, hovertemplate=hover,
               text=[_signed_share(s) for s in share],
               textposition="outside", cliponaxis=False),
    ])
    fig.update_layout(barmode="group", xaxis_title="cleaning step", yaxis_title="characters")
    return style(fig, title, presentation)


def similarity_heatmap(
    matrix: pd.DataFrame, title: str = "Jaccard similarity between documents", presentation: bool = False
) -> go.Figure:
    """Pairwise similarity of documents as a square heatmap (Cividis, 0 to 1), names on both axes.

    ``matrix`` is square with the same labels in the same order on rows and columns (document
    names) and values in [0, 1] (NaN allowed, shown blank). Rows read top-down like the table.
    Sized for up to ~100 documents: every name is labelled, in a small font.
    """
    who = "similarity_heatmap"
    if not isinstance(matrix, pd.DataFrame):
        raise TypeError(f"{who} needs a square pandas DataFrame (index = columns = names); got a {type(matrix).__name__}")
    n_rows, n_cols = matrix.shape
    if n_rows != n_cols or n_rows == 0:
        raise ValueError(
            f"{who} needs a square DataFrame with the same labels on rows and columns; got {n_rows}×{n_cols}"
        )
    if not matrix.index.equals(matrix.columns):
        raise ValueError(
            f"{who} needs the same labels in the same order on rows and columns; got rows "
            f"{list(matrix.index[:5])}... and columns {list(matrix.columns[:5])}...; reorder with m.loc[names, names]"
        )
    try:
        z = matrix.to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{who} needs numeric similarities; got dtypes {sorted(set(map(str, matrix.dtypes)))}") from None
    finite = z[~np.isnan(z)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{who} needs similarities in [0, 1]; got values from {finite.min():g} to {finite.max():g}")
    names = [str(n) for n in matrix.index]
    n = len(names)
    tick = _font_size(presentation, 8 if n > 40 else 10)
    axis = dict(type="category", tickmode="array", tickvals=names, ticktext=names,
                tickfont=dict(size=tick), automargin=True, showgrid=False)
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL,
        colorbar=dict(title=dict(text="Jaccard")),
        hovertemplate="%{y}<br>%{x}<br>similarity %{z:.3f}<extra></extra>",
    ))
    side = min(900, max(320, (tick + 3) * n))  # one label's height per cell
    fig.update_layout(
        width=side + 260, height=side + 220,
        xaxis=dict(axis, tickangle=-90, title=""),
        yaxis=dict(axis, autorange="reversed", scaleanchor="x", title=""),
    )
    return style(fig, title, presentation)


def split_overview(
    train_names: Iterable[Any],
    val_names: Iterable[Any],
    table: pd.DataFrame | None = None,
    title: str | None = None,
    presentation: bool = False,
) -> go.Figure:
    """Which documents went to train and which to val, coloured by split.

    Names are str or ``Document`` objects. Without ``table``, a strip chart (one marker per
    document, a column per split); with ``table`` (columns ``name``, ``characters``, one row per
    document of both splits), horizontal bars of characters per document, grouped by split.
    The default title gives the counts (and characters). A document in both splits is a
    ``ValueError``: that would leak validation text into training.
    """
    who = "split_overview"
    train = _names(train_names, who, "train_names")
    val = _names(val_names, who, "val_names")
    both = sorted(set(train) & set(val))
    if both:
        raise ValueError(f"{who}: documents in both train and val (a leak): {both[:10]}")
    if not train and not val:
        raise ValueError(f"{who} needs at least one document name; got empty train_names and val_names")
    split = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val")}
    colours = {"train": COLORWAY[0], "val": COLORWAY[1]}
    fig = go.Figure()
    if table is None:
        for part, names in (("train", train), ("val", val)):
            fig.add_trace(go.Scatter(
                x=[part] * len(names), y=names, mode="markers", name=f"{part} ({len(names)})",
                marker=dict(symbol="square", size=_font_size(presentation, 10), color=colours[part]),
                hovertemplate="%{y}: %{x}<extra></extra>",
            ))
        order = sorted(val, reverse=True) + sorted(train, reverse=True)  # bottom-up: train names on top
        default_title = f"Document split: {len(train)} train, {len(val)} val"
        xaxis = dict(title="", type="category", categoryorder="array", categoryarray=["train", "val"])
    else:
        _require_frame(table, who, ["name", "characters"])
        _require_numeric(table, who, ["characters"])
        _require_unique(list(table["name"]), who, "table names")
        chars = dict(zip(table["name"].astype(str), table["characters"], strict=True))
        missing = [n for n in split if n not in chars]
        if missing:
            raise ValueError(f"{who}: table has no row for {len(missing)} document(s): {missing[:10]}; "
                             "pass a table with a row per document of both splits")
        totals = {}
        for part, names in (("train", train), ("val", val)):
            totals[part] = sum(float(chars[n]) for n in names)
            fig.add_trace(go.Bar(
                x=[chars[n] for n in names], y=names, orientation="h", name=f"{part} ({len(names)})",
                marker_color=colours[part], hovertemplate=f"%{{y}}<br>{part}<br>%{{x:,}} characters<extra></extra>",
            ))
        order = sorted(val, key=lambda n: chars[n]) + sorted(train, key=lambda n: chars[n])
        default_title = (f"Document split: {len(train)} train ({totals['train'] / 1e6:.2f}M characters), "
                         f"{len(val)} val ({totals['val'] / 1e6:.2f}M characters)")
        xaxis = dict(title="characters")
    row = _font_size(presentation, 10) + 4
    fig.update_layout(
        height=max(320, row * len(split) + 140), barmode="overlay", xaxis=xaxis,
        yaxis=dict(title="", type="category", categoryorder="array", categoryarray=order,
                   tickfont=dict(size=_font_size(presentation, 10)), automargin=True),
    )
    return style(fig, default_title if title is None else title, presentation)


def tokenizer_comparison(
    table: pd.DataFrame, title: str = "Tokenizers on held-out text", presentation: bool = False
) -> go.Figure:
    """Three panels, one bar per tokenizer: characters per token (higher: shorter sequences for the
    same text), tokens for the sample passage, and the share of the vocabulary used on held-out text.

    ``table`` is ``compare_tokenizers(...).table`` (columns ``tokenizer``, ``chars_per_token``,
    ``sample_tokens``, ``vocab_used``; ``vocab_size`` is shown on hover when present).
    """
    who = "tokenizer_comparison"
    metrics = ["chars_per_token", "sample_tokens", "vocab_used"]
    _require_frame(table, who, ["tokenizer", *metrics])
    _require_numeric(table, who, metrics)
    _require_unique(list(table["tokenizer"]), who, "tokenizer names")
    names = table["tokenizer"].astype(str).tolist()
    colours = [COLORWAY[i % len(COLORWAY)] for i in range(len(names))]
    vocab = table["vocab_size"].to_numpy() if "vocab_size" in table.columns else np.full(len(names), np.nan)
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "characters per token", "tokens for the sample", "vocabulary used"))
    panels = [("chars_per_token", ".2f", "%{y:.2f}"), ("sample_tokens", ",.0f", "%{y:,}"),
              ("vocab_used", ".0%", "%{y:.1%}")]
    for col, (metric, fmt, hover_value) in enumerate(panels, start=1):
        fig.add_trace(go.Bar(
            x=names, y=table[metric], name=metric, marker_color=colours, showlegend=False,
            texttemplate=f"%{{y:{fmt}}}", textposition="outside", cliponaxis=False, customdata=vocab,
            hovertemplate=f"%{{x}} (vocab %{{customdata:,}})<br>{hover_value}<extra></extra>",
        ), row=1, col=col)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1], row=1, col=3)
    fig.update_xaxes(type="category")
    fig.update_layout(height=420, bargap=0.3)
    return style(fig, title, presentation)


def zipf_plot(
    freqs: Mapping[str, pd.DataFrame],
    fits: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "Token rank vs count (log–log)",
    presentation: bool = False,
) -> go.Figure:
    """Rank against count on log–log axes, one line per tokenizer; Zipf's law is a straight line.

    ``freqs`` maps a tokenizer name to ``token_frequencies``' table (columns ``rank``, ``count``;
    ``token`` is shown on hover when present). ``fits`` optionally maps some of those names to
    ``zipf_fit`` results (keys ``s``, ``C``; ``min_rank``/``max_rank`` bound the dashed fitted
    line, else the whole rank range); the exponent ``s`` appears in the legend.
    """
    who = "zipf_plot"
    if not isinstance(freqs, Mapping) or not freqs:
        raise ValueError(f"{who} needs a non-empty dict {{tokenizer name: token_frequencies table}}; "
                         f"got {type(freqs).__name__}{' (empty)' if isinstance(freqs, Mapping) else ''}")
    fits = {} if fits is None else fits
    if not isinstance(fits, Mapping):
        raise ValueError(f"{who}: fits must be a dict {{tokenizer name: zipf_fit result}} or None; got {type(fits).__name__}")
    unknown = [k for k in fits if k not in freqs]
    if unknown:
        raise ValueError(f"{who}: fits for {unknown} have no frequency table; freqs has {list(freqs)}")
    colours = _colour_map(freqs)
    fig = go.Figure()
    for name, df in freqs.items():
        _require_frame(df, f"{who} (freqs[{name!r}])", ["rank", "count"])
        _require_numeric(df, f"{who} (freqs[{name!r}])", ["rank", "count"])
        df = df[df["count"] > 0]  # log axes cannot show zero counts
        tokens = (df["token"].astype(str).map(_html) if "token" in df.columns else df["rank"].astype(str)).to_numpy()
        fig.add_trace(go.Scatter(
            x=df["rank"], y=df["count"], mode="lines+markers", name=str(name), legendgroup=str(name),
            line=dict(color=colours[name], width=2), marker=dict(size=4), customdata=tokens,
            hovertemplate="%{customdata}<br>rank %{x:,}<br>count %{y:,}<extra>%{fullData.name}</extra>",
        ))
        if name in fits:
            fit = fits[name]
            missing = [k for k in ("s", "C") if k not in fit]
            if missing:
                raise ValueError(f"{who}: fits[{name!r}] needs keys 's' and 'C' (from zipf_fit); missing {missing}")
            lo = fit.get("min_rank", df["rank"].min())
            hi = fit.get("max_rank", df["rank"].max())
            ranks = np.array([lo, hi], dtype=float)
            fig.add_trace(go.Scatter(
                x=ranks, y=fit["C"] * ranks ** -fit["s"], mode="lines", name=f"{name} fit: s = {fit['s']:.2f}",
                legendgroup=str(name), line=dict(color=colours[name], dash="dash", width=2),
                hovertemplate=f"fit C·rank^−s, s = {fit['s']:.3f}<br>rank %{{x:,}}<br>%{{y:,.0f}}<extra></extra>",
            ))
    fig.update_layout(
        xaxis=dict(type="log", title="rank"), yaxis=dict(type="log", title="count"), height=480,
        legend=dict(groupclick="toggleitem"),
    )
    return style(fig, title, presentation)


# ---------------------------------------------------------------------------------------------
# Training figures (notebook 03_training)
# ---------------------------------------------------------------------------------------------

def lr_schedule(config, title: str = "Learning-rate schedule", presentation: bool = False) -> go.Figure:
    """The learning rate of every optimizer step of a ``TrainConfig``, warm-up shaded."""
    from .trainer import lr_at

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
    df = _require_frame(metrics, "loss_curves", ["step"])
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
    df = _require_frame(diagnostics, "training_diagnostics", ["step", "layer", "grad_norm", "update_ratio"])
    _require_numeric(df, "training_diagnostics", ["step", "grad_norm", "update_ratio"])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("gradient norm (after clipping)", "update / weight ratio per step"))
    layers = list(dict.fromkeys(df["layer"]))  # model order
    colours = _colour_map(layers)
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


# ---------------------------------------------------------------------------------------------
# Attention figures (notebook 02_attention)
# ---------------------------------------------------------------------------------------------
# Shapes: L layers, H heads, T tokens. One attention map is (T, T): row i is query i (the position
# that attends), column j is key j (the position attended to); a softmax row sums to 1. Every
# function takes the array (L, H, T, T) of ``lmkit.attention.as_array`` or a model's
# ``output_attentions`` tuple (one (1, H, T, T) tensor per layer) as it comes; ``tokens`` is the
# list of T token strings (None labels positions only).

AUTO_DOWNSAMPLE_TOKENS = 300  # attention_heatmap block-averages longer inputs: 90k+ cells make a page lag
MAX_CELLS = 128  # a block-averaged map has at most this many cells a side (16k cells draw at once)
HEAD_VIEW_MAX_TOKENS = 100  # beyond this many rows, a head view is a solid fan of lines
_OPACITY_STEPS = 20  # head_view draws one trace per opacity step of 1/20, not one per line
_TOKEN_CHARS = 16  # longer token labels are cut with "…"
_VISIBLE_CHARS = {"\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "␣"}
_ATTENTION_SHAPES = ("an array (L, H, T, T), or a tuple with one (1, H, T, T) or (H, T, T) array/tensor "
                     "per layer (a model's output_attentions)")
# head_scores columns: (label, fixed colour range; None = the data's range)
_HEAD_METRICS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "entropy": ("entropy (nats)", None),
    "mean_distance": ("mean distance (tokens)", None),
    "previous_token": ("previous-token share", (0.0, 1.0)),
    "first_token": ("first-token share", (0.0, 1.0)),
    "induction": ("induction score", None),
}
# Chrome/Chromium for kaleido, in the order to_png tries them (after $BROWSER_PATH).
_BROWSER_CANDIDATES: tuple[str, ...] = (
    "/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome",
)


def _to_float_array(x: Any, who: str, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and dtype (bfloat16 has no numpy dtype)
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {what} must be numbers (an array or tensor); got {type(x).__name__}") from None


def _check_weights(a: np.ndarray, who: str, what: str) -> None:
    if np.isinf(a).any():
        raise ValueError(f"{who}: {what} holds infinite values; expected attention probabilities in [0, 1]")
    if np.isnan(a).all():
        raise ValueError(f"{who}: {what} is all NaN")
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < -1e-2 or hi > 1 + 1e-2:  # slack for float16/bfloat16 rounding
        raise ValueError(f"{who}: {what} must be attention probabilities in [0, 1] (after the softmax); got "
                         f"values from {lo:.3g} to {hi:.3g}. Raw scores? Apply a softmax over the last axis first")


def _attention(attn: Any, who: str = "attention") -> np.ndarray:
    """Attention weights as one float32 array ``(L, H, T, T)``, from an array of that shape or a
    per-layer tuple of ``(1, H, T, T)`` / ``(H, T, T)`` arrays or torch tensors."""
    if isinstance(attn, (tuple, list)):
        if not attn:
            raise ValueError(f"{who} needs {_ATTENTION_SHAPES}; got an empty {type(attn).__name__}")
        layers = []
        for i, layer in enumerate(attn):
            a = _to_float_array(layer, who, f"layer {i}")
            if a.ndim == 4 and a.shape[0] != 1:
                raise ValueError(f"{who}: layer {i} holds a batch of {a.shape[0]} (shape {a.shape}); pass one "
                                 "example: tuple(a[b:b + 1] for a in attentions)")
            if a.ndim == 4:
                a = a[0]
            if a.ndim != 3:
                raise ValueError(f"{who} needs {_ATTENTION_SHAPES}; layer {i} has shape {a.shape}")
            layers.append(a)
        if len({a.shape for a in layers}) > 1:
            raise ValueError(f"{who}: every layer needs the same (H, T, T) shape; got {[a.shape for a in layers]}")
        arr = np.stack(layers)
    else:
        arr = _to_float_array(attn, who, "attn")
        if arr.ndim == 2:
            raise ValueError(f"{who} needs {_ATTENTION_SHAPES}; got one map of shape {arr.shape}: "
                             "pass attn[None, None]")
        if arr.ndim == 3:
            raise ValueError(f"{who} needs {_ATTENTION_SHAPES}; got an array of shape {arr.shape}, which could be "
                             "(H, T, T) or (L, T, T): pass attn[None] for one layer's heads or attn[:, None] "
                             "for one map per layer")
        if arr.ndim != 4:
            raise ValueError(f"{who} needs {_ATTENTION_SHAPES}; got an array of shape {arr.shape}")
    if arr.shape[-1] != arr.shape[-2] or 0 in arr.shape:
        raise ValueError(f"{who} needs square maps, queries × keys: (L, H, T, T); got shape {arr.shape}")
    _check_weights(arr, who, "attn")
    return arr


def _square_map(m: Any, who: str, what: str) -> np.ndarray:
    """One ``(T, T)`` map of weights in [0, 1] (rollout, a head average)."""
    a = _to_float_array(m, who, what)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.size == 0:
        raise ValueError(f"{who}: {what} must be one square (T, T) map, queries × keys; got shape {a.shape}")
    _check_weights(a, who, what)
    return a


def _printable(token: str) -> str:
    """A token as one visible label: newline → \\n, space → ␣, control characters escaped, cut to 16."""
    text = "".join(_VISIBLE_CHARS.get(c, c if c.isprintable() else c.encode("unicode_escape").decode("ascii"))
                   for c in token)
    if len(text) > _TOKEN_CHARS:
        text = text[:_TOKEN_CHARS - 1] + "…"
    return _html(text) if text else "∅"


def _tokens(tokens: Any, n: int, who: str) -> list[str]:
    """Printable token strings, one per position ("" for each position when ``tokens`` is None)."""
    if tokens is None:
        return [""] * n
    if isinstance(tokens, str):
        raise ValueError(f"{who}: tokens must be a list of strings, one per position; got one str of "
                         f"{len(tokens)} characters (for one token per character, pass list(text))")
    try:
        tokens = list(tokens)
    except TypeError:
        raise ValueError(f"{who}: tokens must be a list of strings, one per position; got {type(tokens).__name__}") from None
    if len(tokens) != n:
        raise ValueError(f"{who}: got {len(tokens)} tokens for attention over T = {n} positions; "
                         "pass one token string per position")
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise ValueError(f"{who}: tokens must be strings; position {i} holds {t!r} ({type(t).__name__}). "
                             "Decode ids first, e.g. [tok.decode([i]) for i in ids]")
    return [_printable(t) for t in tokens]


def _label(position: int, token: str) -> str:
    """A unique category label for a position ("3·the"), as plotly's categorical axes need."""
    return f"{position}·{token}" if token else str(position)


def _index(value: Any, n: int, who: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{who}: {what} must be an int; got {value!r}")
    if not -n <= value < n:
        raise ValueError(f"{who}: {what}={value} is out of range: the attention has {n} {what}s "
                         f"(0..{n - 1}, or negative from the end)")
    return int(value) % n


def _indices(values: Any, n: int, who: str, what: str) -> list[int]:
    if values is None:
        return list(range(n))
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        return [_index(values, n, who, what)]
    try:
        out = [_index(v, n, who, what) for v in values]
    except TypeError:
        raise ValueError(f"{who}: {what}s must be None, an int or a list of ints; got {values!r}") from None
    if not out:
        raise ValueError(f"{who}: {what}s is empty; pass None for all {n}")
    _require_unique(out, who, f"{what}s")
    return out


def _positive_int(value: Any, who: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {what} must be a positive int; got {value!r}")
    return int(value)


def _span(n: int, max_tokens: int | None, window: tuple[int, int] | None, who: str) -> tuple[int, int]:
    """Positions ``[start, stop)`` to show: ``window``, else the last ``max_tokens``, else all."""
    if window is not None:
        try:
            start, stop = (int(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"{who}: window must be (start, stop) positions; got {window!r}") from None
        if not 0 <= start < stop <= n:
            raise ValueError(f"{who}: window=({start}, {stop}) needs 0 <= start < stop <= T = {n}")
        return start, stop
    if max_tokens is not None:
        return max(0, n - _positive_int(max_tokens, who, "max_tokens")), n
    return 0, n


def _blank_future(m: np.ndarray) -> np.ndarray:
    """A float copy of one (T, T) map with the causal mask (an all-zero upper triangle) set to NaN,
    which plotly draws as blank cells; a bidirectional (encoder) map comes back unchanged."""
    m = np.array(m, dtype=np.float32)
    future = np.triu(np.ones(m.shape, dtype=bool), k=1)
    if future.any() and not m[future].any():
        m[future] = np.nan
    return m


def _block_mean(m: np.ndarray, max_cells: int) -> tuple[np.ndarray, int]:
    """Average ``(..., T, T)`` over b×b blocks (b = ceil(T / max_cells)), ignoring NaN (masked)
    cells: ``(..., ceil(T/b), ceil(T/b))`` and b. A block with no unmasked cell stays NaN."""
    t = m.shape[-1]
    b = -(-t // max_cells)
    if b == 1:
        return m, 1
    n = -(-t // b)
    pad = [(0, 0)] * (m.ndim - 2) + [(0, n * b - t)] * 2
    blocks = np.pad(m, pad, constant_values=np.nan).reshape(*m.shape[:-2], n, b, n, b)
    counts = (~np.isnan(blocks)).sum(axis=(-3, -1))
    sums = np.nansum(blocks, axis=(-3, -1))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32), b


def _map_view(m: np.ndarray, tokens: list[str], span: tuple[int, int],
              max_cells: int | None) -> tuple[np.ndarray, list[str], int]:
    """One (T, T) map ready to draw: cropped to ``span``, causal mask blanked, block-averaged to at
    most ``max_cells`` a side (None: never). Returns z, axis labels, block size."""
    start, stop = span
    z = _blank_future(m[start:stop, start:stop])
    if max_cells is None or stop - start <= max_cells:
        return z, [_label(i, tokens[i]) for i in range(start, stop)], 1
    z, b = _block_mean(z, max_cells)
    return z, [f"{lo}–{min(lo + b, stop) - 1}" for lo in range(start, stop, b)], b


def _note(t: int, span: tuple[int, int], block: int, auto: bool = False) -> str | None:
    """What the figure shows of the input, for the subtitle: the window and the block size."""
    parts = []
    if span != (0, t):
        parts.append(f"positions {span[0]}–{span[1] - 1} of {t}")
    if block > 1:
        why = f" (T = {span[1] - span[0]} > {AUTO_DOWNSAMPLE_TOKENS}; downsample=False draws every token)" if auto else ""
        parts.append(f"block-averaged: {block}×{block} tokens per cell{why}")
    return "; ".join(parts) or None


def _colour_max(zmax: float | None, block: int, maps: Iterable[np.ndarray], who: str) -> float:
    """Top of the colour scale: ``zmax`` when given; else 1 for token-level maps and the largest
    mean for block-averaged ones (block means of a long input are ~1/T: on 0..1 all one colour)."""
    if zmax is not None:
        if isinstance(zmax, bool) or not isinstance(zmax, (int, float)) or not 0 < zmax <= 1:
            raise ValueError(f"{who}: zmax must be None or a number in (0, 1]; got {zmax!r}")
        return float(zmax)
    if block == 1:
        return 1.0
    top = max((float(np.nanmax(z)) for z in maps if not np.isnan(z).all()), default=1.0)
    return max(top, 1e-6)


def _colour_axis(cmax: float, block: int, **colorbar: Any) -> dict:
    title = "weight" if block == 1 else "mean weight"
    return dict(colorscale=SEQUENTIAL, cmin=0.0, cmax=cmax, colorbar=dict(title=dict(text=title), **colorbar))


def _heatmap(z: np.ndarray, labels: list[str], block: int, prefix: str = "", **kwargs: Any) -> go.Heatmap:
    """A map trace: queries on y, keys on x, masked cells blank, colours from the layout's
    ``coloraxis`` (one scale shared by every map of a figure, see ``_colour_axis``)."""
    what = "queries %{y} → keys %{x}: mean %{z:.3f}" if block > 1 else "%{y} → %{x}: %{z:.3f}"
    return go.Heatmap(z=z, x=labels, y=labels, hoverongaps=False, coloraxis="coloraxis",
                      hovertemplate=f"{prefix}{what}<extra></extra>", **kwargs)


def _map_layout(fig: go.Figure, labels: list[str], presentation: bool, note: str | None,
                controls: bool = False) -> None:
    """Square cells, keys along the top, queries down the side in reading order, every token
    labelled while they fit (plotly thins the rest). ``controls``: room below the map for a slider
    and, left of it, a dropdown or play buttons."""
    n = len(labels)
    tick = _font_size(presentation, 9 if n > 40 else 11)
    label_px = int(max(len(_unescape_html(lb)) for lb in labels) * tick * 0.62) + 10  # rotated key labels
    axis = dict(type="category", showgrid=False, zeroline=False, ticks="", tickfont=dict(size=tick), automargin=True)
    side = min(720, max(320, n * (tick + 10)))
    title_px = _font_size(presentation, 16) + 2 * tick + 30 + (_font_size(presentation, 14) + 10 if note else 0)
    left, bottom = (_font_size(presentation, 12) * 12, 110) if controls else (80, 30)
    fig.update_layout(
        width=side + label_px + left + 120, height=side + label_px + title_px + bottom + 20,
        margin=dict(t=label_px + title_px, b=bottom, l=left),
        xaxis=dict(axis, side="top", tickangle=-90, title=dict(text="key (attended to)")),
        yaxis=dict(axis, autorange="reversed", scaleanchor="x", constrain="domain",
                   title=dict(text="query (attending)")),
        plot_bgcolor="white",  # masked cells show as white, apart from Cividis's darkest blue (weight 0)
        title=dict(yref="container", y=1.0, yanchor="top", pad=dict(t=16)),  # above the key labels
    )
    if note:
        fig.update_layout(title=dict(subtitle=dict(text=note)))


def _single_map_figure(who: str, attn: Any, tokens: Any, layer: int, head: int, max_tokens: int | None,
                       window: tuple[int, int] | None, downsample: bool | None, max_cells: int,
                       zmax: float | None, title: str | None, presentation: bool) -> go.Figure:
    a = _attention(attn, who)
    n_layer, n_head, t, _ = a.shape
    layer, head = _index(layer, n_layer, who, "layer"), _index(head, n_head, who, "head")
    names = _tokens(tokens, t, who)
    span = _span(t, max_tokens, window, who)
    max_cells = _positive_int(max_cells, who, "max_cells")
    auto = downsample is None
    if auto:
        downsample = span[1] - span[0] > AUTO_DOWNSAMPLE_TOKENS
    z, labels, block = _map_view(a[layer, head], names, span, max_cells if downsample else None)
    fig = go.Figure(_heatmap(z, labels, block))
    fig.update_layout(coloraxis=_colour_axis(_colour_max(zmax, block, [z], who), block))
    _map_layout(fig, labels, presentation, _note(t, span, block, auto))
    return style(fig, f"Attention: layer {layer}, head {head}" if title is None else title, presentation)


def attention_heatmap(
    attn: Any, tokens: Sequence[str] | None = None, layer: int = 0, head: int = 0, *,
    max_tokens: int | None = None, window: tuple[int, int] | None = None, downsample: bool | None = None,
    max_cells: int = MAX_CELLS, zmax: float | None = None, title: str | None = None, presentation: bool = False,
) -> go.Figure:
    """One head's attention map: query tokens down the side, key tokens along the top, the weight
    (0 to 1, Cividis) on hover as ``query → key: 0.123``; the causal mask (future keys) is blank.

    ``attn``: ``(L, H, T, T)`` array or a per-layer tuple of ``(1, H, T, T)`` tensors; ``tokens``:
    T strings (labels become "position·token", newline shown as \\n, space as ␣). ``layer`` and
    ``head`` may be negative (from the end). ``window=(start, stop)`` crops to those positions,
    else ``max_tokens`` to the last ones. Beyond ``AUTO_DOWNSAMPLE_TOKENS`` (300) positions the map
    is block-averaged to at most ``max_cells`` a side, noted in the subtitle; ``downsample=False``
    draws every cell, ``True`` always block-averages. Colours run from 0 to ``zmax``: by default 1
    for a token-level map and the largest block mean for a block-averaged one.
    """
    return _single_map_figure("attention_heatmap", attn, tokens, layer, head, max_tokens, window,
                              downsample, max_cells, zmax, title, presentation)


def attention_overview(
    attn: Any, tokens: Sequence[str] | None = None, layer: int = 0, head: int = 0, max_cells: int = MAX_CELLS, *,
    max_tokens: int | None = None, window: tuple[int, int] | None = None, zmax: float | None = None,
    title: str | None = None, presentation: bool = False,
) -> go.Figure:
    """A long input's map at a glance: block-averaged to at most ``max_cells`` × ``max_cells``
    cells (a 1,000-token map becomes 125 × 125 blocks of 8 tokens), axes labelled with position
    ranges ("0–7"), hover ``queries 0–7 → keys 8–15: mean 0.012``; colours run up to the largest
    block mean unless ``zmax`` is given. Zoom in on a region with
    ``attention_heatmap(..., window=(start, stop))``. Arguments as ``attention_heatmap``.
    """
    return _single_map_figure("attention_overview", attn, tokens, layer, head, max_tokens, window,
                              True, max_cells, zmax, title, presentation)


def model_view(
    attn: Any, tokens: Sequence[str] | None = None, *, layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None, max_tokens: int | None = None, window: tuple[int, int] | None = None,
    max_cells: int = 64, zmax: float | None = None, title: str | None = None, presentation: bool = False,
) -> go.Figure:
    """Every head of every layer at once (bertviz's "model view"): a layer × head grid of small
    maps on one colour scale (0 to 1), rows titled "layer l", columns "head h"; hover names the
    head, the query, the key and the weight. ``layers``/``heads`` pick a subset (None: all).
    Thumbnails are block-averaged to at most ``max_cells`` a side (a thumbnail has ~100 pixels);
    colours as ``attention_heatmap`` (``zmax``).
    """
    who = "model_view"
    a = _attention(attn, who)
    n_layer, n_head, t, _ = a.shape
    layers, heads = _indices(layers, n_layer, who, "layer"), _indices(heads, n_head, who, "head")
    names = _tokens(tokens, t, who)
    span = _span(t, max_tokens, window, who)
    max_cells = _positive_int(max_cells, who, "max_cells")
    thumb = 120 if presentation else 90  # pixels per small map
    width, height = len(heads) * thumb + 190, len(layers) * thumb + 150
    fig = make_subplots(
        rows=len(layers), cols=len(heads), row_titles=[f"layer {lay}" for lay in layers],
        column_titles=[f"head {h}" for h in heads],
        horizontal_spacing=min(8 / width, 0.5 / max(1, len(heads) - 1)),
        vertical_spacing=min(8 / height, 0.5 / max(1, len(layers) - 1)),
    )
    block, maps = 1, []
    for r, lay in enumerate(layers, start=1):
        for c, h in enumerate(heads, start=1):
            z, labels, block = _map_view(a[lay, h], names, span, max_cells)
            maps.append(z)
            fig.add_trace(_heatmap(z, labels, block, prefix=f"layer {lay}, head {h}<br>"),
                          row=r, col=c)
    hidden = dict(type="category", showticklabels=False, showgrid=False, zeroline=False, ticks="")
    fig.update_xaxes(hidden)
    fig.update_yaxes(hidden, autorange="reversed")
    fig.update_layout(
        width=width, height=height, plot_bgcolor="white", margin=dict(l=30, r=110, t=110, b=30),
        coloraxis=_colour_axis(_colour_max(zmax, block, maps, who), block, x=1.0, xanchor="left", xpad=45,
                               thickness=14),
    )
    note = _note(t, span, block)
    if note:
        fig.update_layout(title=dict(subtitle=dict(text=note)))
    return style(fig, "Attention of every head (rows: layers, columns: heads)" if title is None else title,
                 presentation)


def head_view(
    attn: Any, tokens: Sequence[str] | None = None, layer: int = 0, heads: Sequence[int] | None = None, *,
    min_weight: float = 0.02, max_tokens: int | None = None, window: tuple[int, int] | None = None,
    title: str | None = None, presentation: bool = False,
) -> go.Figure:
    """bertviz's "head view" for one layer: the tokens twice, queries on the left and keys on the
    right, and a line from each query to each key it attends to, its opacity the weight (weights
    below ``min_weight`` are left out, to keep the picture light). One colour and one legend entry
    per head: click a head in the legend to hide or show it, double-click to isolate it. Hover a
    line near its query end for ``head h: query → key: weight``.

    Opacity is drawn in steps of 1/20 (each line at the step at or above its weight), one trace per
    step and head rather than one per line. More than ``HEAD_VIEW_MAX_TOKENS`` (100) positions
    are cropped to the last 100 unless ``window``/``max_tokens`` say otherwise (noted).
    """
    who = "head_view"
    a = _attention(attn, who)
    n_layer, n_head, t, _ = a.shape
    layer = _index(layer, n_layer, who, "layer")
    heads = _indices(heads, n_head, who, "head")
    names = _tokens(tokens, t, who)
    if not isinstance(min_weight, (int, float)) or isinstance(min_weight, bool) or not 0 < min_weight <= 1:
        raise ValueError(f"{who}: min_weight must be a number in (0, 1]; got {min_weight!r}")
    if max_tokens is None and window is None and t > HEAD_VIEW_MAX_TOKENS:
        max_tokens = HEAD_VIEW_MAX_TOKENS
    start, stop = _span(t, max_tokens, window, who)
    pos = np.arange(start, stop)
    labels = [_label(i, names[i]) for i in pos]
    text = [names[i] or str(i) for i in pos]
    tick = _font_size(presentation, 12)
    fig = go.Figure()
    for k, h in enumerate(heads):
        colour, group = COLORWAY[k % len(COLORWAY)], f"head {h}"
        # The legend entry: a full-strength line, whatever the opacity of the head's faintest lines.
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=group, legendgroup=group,
                                 line=dict(color=colour, width=3), hoverinfo="skip"))
        w = a[layer, h, start:stop, start:stop]
        q, key = np.nonzero(w >= min_weight)
        weight = w[q, key]
        level = np.clip(np.ceil(weight * _OPACITY_STEPS - 1e-6), 1, _OPACITY_STEPS) / _OPACITY_STEPS
        for opacity in np.unique(level):
            sel = level == opacity
            xs, ys = [], []
            for i, j in zip(pos[q[sel]], pos[key[sel]], strict=True):
                xs += [0.0, 1.0, None]
                ys += [int(i), int(j), None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=group, legendgroup=group, showlegend=False,
                                     line=dict(color=colour, width=2), opacity=float(opacity), hoverinfo="skip"))
        if len(q):  # invisible hover points a fifth of the way along each line (query ends all coincide)
            fig.add_trace(go.Scatter(
                x=np.full(len(q), 0.2), y=pos[q] + 0.2 * (pos[key] - pos[q]), mode="markers", name=group,
                legendgroup=group, showlegend=False, marker=dict(size=9, color=colour, opacity=0),
                text=[f"{group}: {labels[i]} → {labels[j]}: {v:.3f}" for i, j, v in zip(q, key, weight, strict=True)],
                hovertemplate="%{text}<extra></extra>",
            ))
    for x, side in ((0.0, "middle left"), (1.0, "middle right")):
        fig.add_trace(go.Scatter(x=np.full(len(pos), x), y=pos, mode="text", text=text, textposition=side,
                                 textfont=dict(size=tick), hovertext=labels, hoverinfo="text", showlegend=False))
    for x, name in ((0.0, "query"), (1.0, "key")):
        fig.add_annotation(x=x, y=start - 0.9, text=f"<b>{name}</b>", showarrow=False,
                           xanchor="right" if x == 0 else "left", yanchor="bottom")
    row = tick + 9
    fig.update_layout(
        width=620, height=max(320, row * len(pos) + 170), hovermode="closest",
        xaxis=dict(visible=False, range=[-0.75, 1.75], fixedrange=True),
        yaxis=dict(visible=False, range=[stop - 0.5, start - 1.2], fixedrange=True),
        legend=dict(title=dict(text="heads (click to toggle)"), itemsizing="constant"),
    )
    note = _note(t, (start, stop), 1)
    if note:
        fig.update_layout(title=dict(subtitle=dict(text=note)))
    return style(fig, f"Head view: layer {layer}" if title is None else title, presentation)


def attention_explorer_figure(
    attn: Any, tokens: Sequence[str] | None = None, layer: int = 0, head: int = 0, *,
    max_tokens: int | None = None, window: tuple[int, int] | None = None, max_cells: int = MAX_CELLS,
    zmax: float | None = None, title: str | None = None, presentation: bool = False,
) -> go.Figure:
    """Every head's map in one figure, a dropdown to pick the layer and a slider to pick the head,
    working without a Python kernel (an exported HTML file, a rendered notebook): all L × H maps
    are embedded as traces and the controls switch ``visible``. One slider per layer, the dropdown
    shows that layer's slider. Starts at ``layer``, ``head``. Maps longer than ``max_cells`` are
    block-averaged (the file holds L × H maps); colours as ``attention_heatmap`` (``zmax``), one
    scale for all heads. For a live explorer see ``lmkit.widgets``.
    """
    who = "attention_explorer_figure"
    a = _attention(attn, who)
    n_layer, n_head, t, _ = a.shape
    layer, head = _index(layer, n_layer, who, "layer"), _index(head, n_head, who, "head")
    names = _tokens(tokens, t, who)
    span = _span(t, max_tokens, window, who)
    max_cells = _positive_int(max_cells, who, "max_cells")
    base = "Attention" if title is None else title
    fig = go.Figure()
    labels, block, maps = [], 1, []
    for lay in range(n_layer):
        for h in range(n_head):
            z, labels, block = _map_view(a[lay, h], names, span, max_cells)
            maps.append(z)
            fig.add_trace(_heatmap(z, labels, block, prefix=f"layer {lay}, head {h}<br>",
                                   visible=(lay, h) == (layer, head), name=f"layer {lay}, head {h}"))

    def visible(lay: int, h: int) -> list[bool]:
        return [k == lay * n_head + h for k in range(n_layer * n_head)]

    def heading(lay: int, h: int) -> str:
        return f"{base}: layer {lay}, head {h}"

    sliders = [dict(
        active=head if lay == layer else 0, visible=lay == layer, x=0, len=1, y=0, yanchor="top",
        pad=dict(t=20), currentvalue=dict(prefix=f"layer {lay}, head "),
        steps=[dict(label=str(h), method="update",
                    args=[{"visible": visible(lay, h)}, {"title.text": heading(lay, h)}]) for h in range(n_head)],
    ) for lay in range(n_layer)]
    buttons = [dict(label=f"layer {lay}", method="update", args=[
        {"visible": visible(lay, 0)},
        {"title.text": heading(lay, 0), f"sliders[{lay}].active": 0,
         **{f"sliders[{k}].visible": k == lay for k in range(n_layer)}},
    ]) for lay in range(n_layer)]
    fig.update_layout(
        sliders=sliders,
        updatemenus=[dict(type="dropdown", direction="up", buttons=buttons, active=layer, x=-0.02, xanchor="right", y=0,
                          yanchor="top", pad=dict(t=50), showactive=True)],
        coloraxis=_colour_axis(_colour_max(zmax, block, maps, who), block),
    )
    _map_layout(fig, labels, presentation, _note(t, span, block), controls=True)
    return style(fig, heading(layer, head), presentation)


def rollout_comparison(
    raw_layer_avg: Any, rollout_last: Any, tokens: Sequence[str] | None = None, *, layer: int | None = None,
    max_tokens: int | None = None, window: tuple[int, int] | None = None, downsample: bool | None = None,
    max_cells: int = MAX_CELLS, zmax: float | None = None, title: str | None = "Raw attention vs attention rollout",
    presentation: bool = False,
) -> go.Figure:
    """Side by side, on one colour scale: ``raw_layer_avg``, one layer's attention averaged over
    heads, and ``rollout_last``, attention rollout through all layers; both ``(T, T)``, computed
    by the caller so this module needs no model code::

        a = lmkit.attention.as_array(attentions)              # (L, H, T, T)
        rollout_comparison(a[-1].mean(axis=0), lmkit.attention.rollout(a)[-1], tokens, layer=len(a) - 1)

    Rollout (Abnar & Zuidema 2020, see ``lmkit.attention.rollout``) composes the head-averaged
    layers with the residual stream modelled as ``0.5 A + 0.5 I``. Its caveat holds here too: it
    ignores the MLPs and the value vectors, so read it as a heuristic picture of how information
    flows, not as an attribution of the output to the input tokens. ``layer`` only names the raw
    panel. Cropping, downsampling and colours (``zmax``) as ``attention_heatmap``.
    """
    who = "rollout_comparison"
    raw = _square_map(raw_layer_avg, who, "raw_layer_avg")
    roll = _square_map(rollout_last, who, "rollout_last")
    if raw.shape != roll.shape:
        raise ValueError(f"{who}: raw_layer_avg {raw.shape} and rollout_last {roll.shape} must be the same (T, T)")
    t = raw.shape[0]
    names = _tokens(tokens, t, who)
    span = _span(t, max_tokens, window, who)
    max_cells = _positive_int(max_cells, who, "max_cells")
    auto = downsample is None
    if auto:
        downsample = span[1] - span[0] > AUTO_DOWNSAMPLE_TOKENS
    which = "last layer" if layer is None else f"layer {layer}"
    panels = (f"raw attention ({which}, mean over heads)", "rollout through all layers")
    fig = make_subplots(rows=1, cols=2, subplot_titles=panels, horizontal_spacing=0.12)
    block, labels, maps = 1, [], []
    for col, (m, panel) in enumerate(zip((raw, roll), panels, strict=True), start=1):
        z, labels, block = _map_view(m, names, span, max_cells if downsample else None)
        maps.append(z)
        fig.add_trace(_heatmap(z, labels, block, prefix=f"{panel}<br>", name=panel),
                      row=1, col=col)
    n = len(labels)
    tick = _font_size(presentation, 9 if n > 40 else 11)
    axis = dict(type="category", showgrid=False, zeroline=False, ticks="", tickfont=dict(size=tick), automargin=True)
    fig.update_xaxes(axis, tickangle=-90, title_text="key")
    fig.update_yaxes(axis, autorange="reversed", title_text="query")
    fig.update_yaxes(scaleanchor="x", constrain="domain", row=1, col=1)
    fig.update_yaxes(scaleanchor="x2", constrain="domain", showticklabels=False, title_text="", row=1, col=2)
    side = min(560, max(280, n * (tick + 10)))
    fig.update_layout(
        width=2 * side + 330, height=side + 260, plot_bgcolor="white",
        coloraxis=_colour_axis(_colour_max(zmax, block, maps, who), block),
    )
    note = _note(t, span, block, auto)
    if note:
        fig.update_layout(title=dict(subtitle=dict(text=note)))
    return style(fig, title, presentation)


def head_scores_heatmap(
    scores: pd.DataFrame, metric: str | None = "previous_token", *, title: str | None = None,
    presentation: bool = False,
) -> go.Figure:
    """One number per head as a layer × head heatmap (layer 0 on top, values printed in the cells).

    ``scores`` is ``lmkit.attention.head_scores(attn)`` (columns ``layer``, ``head`` and one
    column per metric, one row per head). ``metric`` names the column to show; ``metric=None``
    shows a row of panels, one per metric present (``entropy``, ``mean_distance``,
    ``previous_token``, ``first_token``, ``induction``, then any other numeric column), each with
    its own colour scale. Shares (previous/first token) are on 0..1, the others on their range.
    """
    who = "head_scores_heatmap"
    if metric is None:
        df = _require_frame(scores, who, ["layer", "head"])
        known = [m for m in _HEAD_METRICS if m in df.columns]
        others = [c for c in df.columns if c not in ("layer", "head", *known)
                  and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        metrics = known + others
        if not metrics:
            raise ValueError(f"{who}: no metric columns besides layer and head; got columns {list(df.columns)}")
    else:
        df = _require_frame(scores, who, ["layer", "head", metric])
        metrics = [metric]
    _require_numeric(df, who, ["layer", "head", *metrics])
    pairs = list(zip(df["layer"], df["head"], strict=True))
    _require_unique(pairs, who, "(layer, head) rows")
    layers, heads = sorted(df["layer"].unique()), sorted(df["head"].unique())
    cells = len(layers) * len(heads)
    tick = _font_size(presentation, 11)
    panel_w, panel_h = max(220, 30 * len(heads)), max(200, 30 * len(layers))
    gap = 70
    width = len(metrics) * panel_w + (len(metrics) - 1) * gap + 160
    titles = [_HEAD_METRICS.get(m, (m, None))[0] for m in metrics] if len(metrics) > 1 else None
    fig = make_subplots(rows=1, cols=len(metrics), horizontal_spacing=gap / width if len(metrics) > 1 else 0.0,
                        subplot_titles=titles)
    for k, m in enumerate(metrics):
        label, fixed = _HEAD_METRICS.get(m, (m, None))
        z = df.pivot(index="layer", columns="head", values=m).reindex(index=layers, columns=heads).to_numpy(float)
        if fixed is None:
            finite = z[np.isfinite(z)]
            lo, hi = (min(0.0, float(finite.min())), float(finite.max())) if finite.size else (0.0, 1.0)
            fixed = (lo, hi if hi > lo else lo + 1.0)
        axis_name = "coloraxis" if k == 0 else f"coloraxis{k + 1}"
        fig.add_trace(go.Heatmap(
            z=z, x=[str(h) for h in heads], y=[str(lay) for lay in layers], coloraxis=axis_name, xgap=1, ygap=1,
            hoverongaps=False, texttemplate="%{z:.2f}" if cells <= 200 else None, textfont=dict(size=tick - 1),
            hovertemplate=f"layer %{{y}}, head %{{x}}<br>{label}: %{{z:.3f}}<extra></extra>", name=label,
        ), row=1, col=k + 1)
        domain = fig.layout[f"xaxis{k + 1 if k else ''}"].domain
        bar = (dict(title=dict(text=label, side="right")) if len(metrics) == 1 else
               dict(orientation="h", x=(domain[0] + domain[1]) / 2, xanchor="center", y=-(2 * tick + 40) / panel_h,
                    yanchor="top", len=domain[1] - domain[0], lenmode="fraction", thickness=12))
        fig.update_layout({axis_name: dict(colorscale=SEQUENTIAL, cmin=fixed[0], cmax=fixed[1], colorbar=bar)})
    fig.update_xaxes(type="category", title_text="head", showgrid=False, tickfont=dict(size=tick))
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False, tickfont=dict(size=tick))
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(width=width + (80 if len(metrics) == 1 else 0), plot_bgcolor="white",
                      height=panel_h + (2 * tick + 200 if len(metrics) > 1 else 150),
                      margin=dict(b=2 * tick + 110 if len(metrics) > 1 else 60))
    default = (f"Head scores: {_HEAD_METRICS.get(metrics[0], (metrics[0], None))[0]}" if metric is not None
               else "Head scores")
    return style(fig, default if title is None else title, presentation)


def attention_evolution(
    snapshots: Sequence[tuple[int, Any]] | Mapping[int, Any], tokens: Sequence[str] | None = None,
    layer: int = 0, head: int = 0, *, max_tokens: int | None = None, window: tuple[int, int] | None = None,
    downsample: bool | None = None, max_cells: int = MAX_CELLS, zmax: float | None = None,
    title: str | None = None, frame_ms: int = 500, presentation: bool = False,
) -> go.Figure:
    """How one head's map changes over training, as a plotly animation: a frame per snapshot,
    a step slider and play/pause buttons; the title names the step shown. Works in static HTML.

    ``snapshots`` is ``[(step, attn), ...]`` (``AttentionSnapshots.snapshots`` or
    ``lmkit.attention.load_snapshots(run_dir)[0]``) or ``{step: attn}``, each ``attn`` as in
    ``attention_heatmap`` with the same T; frames are ordered by step. ``frame_ms`` sets the
    playback speed. Cropping, downsampling and colours (``zmax``, one scale for all steps) as
    ``attention_heatmap``.
    """
    who = "attention_evolution"
    items = list(snapshots.items()) if isinstance(snapshots, Mapping) else snapshots
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ValueError(f"{who} needs a list of (step, attention) pairs; got {type(snapshots).__name__}")
    items = list(items)
    if not items:
        raise ValueError(f"{who} needs at least one (step, attention) snapshot; got none")
    maps: list[tuple[int, np.ndarray]] = []
    for k, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{who}: snapshot {k} must be a (step, attention) pair; got {type(item).__name__}")
        step, attn = item
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"{who}: snapshot {k} has step {step!r}; steps must be ints")
        a = _attention(attn, f"{who} (snapshot at step {step})")
        if maps and a.shape[-1] != maps[0][1].shape[-1]:
            raise ValueError(f"{who}: every snapshot needs the same T (the same probe tokens); step {step} has "
                             f"T = {a.shape[-1]}, step {maps[0][0]} has T = {maps[0][1].shape[-1]}")
        lay = _index(layer, a.shape[0], f"{who} (snapshot at step {step})", "layer")
        h = _index(head, a.shape[1], f"{who} (snapshot at step {step})", "head")
        maps.append((int(step), a[lay, h]))
        base = f"Attention: layer {lay}, head {h}" if title is None else title
    _require_unique([s for s, _ in maps], who, "steps")
    maps.sort(key=lambda sm: sm[0])
    t = maps[0][1].shape[-1]
    names = _tokens(tokens, t, who)
    span = _span(t, max_tokens, window, who)
    max_cells = _positive_int(max_cells, who, "max_cells")
    frame_ms = _positive_int(frame_ms, who, "frame_ms")
    auto = downsample is None
    if auto:
        downsample = span[1] - span[0] > AUTO_DOWNSAMPLE_TOKENS
    views = [(step, *_map_view(m, names, span, max_cells if downsample else None)) for step, m in maps]
    frames = [go.Frame(name=str(step), data=[_heatmap(z, labels, block)],
                       layout=dict(title=dict(text=f"{base}, step {step}"))) for step, z, labels, block in views]
    step0, z0, labels, block = views[0]
    fig = go.Figure(data=[_heatmap(z0, labels, block)], frames=frames)
    still = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    fig.update_layout(
        coloraxis=_colour_axis(_colour_max(zmax, block, [z for _, z, _, _ in views], who), block),
        sliders=[dict(active=0, x=0, len=1, y=0, yanchor="top", pad=dict(t=20),
                      currentvalue=dict(prefix="step "),
                      steps=[dict(label=str(s), method="animate", args=[[str(s)], still]) for s, *_ in views])],
        updatemenus=[dict(type="buttons", direction="down", x=-0.02, xanchor="right", y=0, yanchor="top",
                          pad=dict(t=30),
                          showactive=False, buttons=[
                              dict(label="▶ play", method="animate", args=[None, dict(
                                  mode="immediate", fromcurrent=True, frame=dict(duration=frame_ms, redraw=True),
                                  transition=dict(duration=0))]),
                              dict(label="❚❚ pause", method="animate", args=[[None], still]),
                          ])],
    )
    _map_layout(fig, labels, presentation, _note(t, span, block, auto), controls=True)
    return style(fig, f"{base}, step {step0}", presentation)


# ---------------------------------------------------------------------------------------------
# Export: one self-contained HTML page, or a PNG through kaleido and the system's Chromium
# ---------------------------------------------------------------------------------------------

def _require_figure(fig: Any, who: str) -> go.Figure:
    if not isinstance(fig, go.Figure):
        raise TypeError(f"{who} needs a plotly go.Figure (what lmkit.viz functions return); got {type(fig).__name__}")
    return fig


def to_html(fig: go.Figure, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write ``fig`` as one self-contained HTML page and return its path: plotly.js is inlined
    (~4.8 MB, no CDN, opens offline and from an e-mail attachment), MathJax left out, sliders and
    dropdowns work without Python. ``title`` is the browser tab's title (default: the figure's).
    Written atomically (temp file, then rename).
    """
    import plotly.io as pio

    _require_figure(fig, "to_html")
    path = Path(path)
    page = pio.to_html(fig, include_plotlyjs=True, include_mathjax=False, full_html=True,
                       config={"displaylogo": False})
    if title is None:
        title = re.sub(r"<[^>]+>", "", fig.layout.title.text or "") or path.stem
    page = page.replace("<head>", f"<head>\n    <title>{_escape_html(title)}</title>", 1)
    if re.search(r"<script[^>]*\bsrc=[\"']?(https?:)?//", page):  # a CDN script would break offline use
        raise RuntimeError("to_html: plotly produced a page that loads a script from the network; "
                           "this plotly version ignores include_plotlyjs=True")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path


def _find_browser() -> str:
    """Chrome/Chromium for kaleido: ``$BROWSER_PATH``, else Debian's /usr/bin/chromium, else one on
    PATH. Never downloads one (kaleido's ``get_chrome`` would)."""
    fix = ("install one (Debian/Ubuntu: apt-get install chromium) or set BROWSER_PATH to a Chrome/Chromium "
           "executable; lmkit never downloads a browser")
    env = os.environ.get("BROWSER_PATH")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise RuntimeError(f"to_png: BROWSER_PATH={env!r} is not an executable browser; {fix}")
    for name in _BROWSER_CANDIDATES:
        found = name if os.path.isabs(name) else shutil.which(name)
        if found and os.path.isfile(found) and os.access(found, os.X_OK):
            return found
    raise RuntimeError(f"to_png needs a Chrome or Chromium browser for kaleido and found none "
                       f"(looked at $BROWSER_PATH and {', '.join(_BROWSER_CANDIDATES)}); {fix}")


def to_png(fig: go.Figure, path: str | os.PathLike, *, scale: float = 2, width: int | None = None,
           height: int | None = None) -> Path:
    """Render ``fig`` to a PNG with kaleido and return its path. ``width``/``height`` in CSS pixels
    (default: the figure's own, else 700 × 500); ``scale=2`` doubles the pixels for slides/print.

    Kaleido 1.x drives a Chrome: this uses ``$BROWSER_PATH`` or the system's Chromium
    (``apt-get install chromium``) and raises ``RuntimeError`` saying so when there is none; it
    never calls kaleido's ``get_chrome`` (a download). MathJax is switched off: plotly's
    ``plotly.io.defaults.mathjax = False`` alone does not reach kaleido 1.5 (kaleido then loads
    MathJax from a CDN), so kaleido is called with ``mathjax=False`` directly. Takes a few seconds
    (Chromium starts for each call). Written atomically.
    """
    import plotly.io as pio

    _require_figure(fig, "to_png")
    browser = _find_browser()
    try:
        import kaleido
        from kaleido.errors import ChromeNotFoundError
    except ImportError:
        raise RuntimeError("to_png needs kaleido >= 1 (pip install kaleido)") from None
    pio.defaults.mathjax = False  # the same for any fig.write_image in this session
    fig_dict = fig.to_dict()
    layout = fig_dict.get("layout", {})
    opts = dict(format="png", scale=scale, width=width or layout.get("width") or pio.defaults.default_width,
                height=height or layout.get("height") or pio.defaults.default_height)
    try:
        png = kaleido.calc_fig_sync(fig_dict, opts=opts, kopts=dict(path=browser, mathjax=False))
    except ChromeNotFoundError as e:
        raise RuntimeError(f"to_png: kaleido could not start the browser at {browser!r} ({e}); "
                           "apt-get install chromium, or set BROWSER_PATH to a working Chrome/Chromium") from None
    path = Path(path)
    write_bytes_atomic(path, png)
    return path


def matrix_grid(matrices: Mapping[str, Any], row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
                title: str | None = None, presentation: bool = False) -> go.Figure:
    """Small heatmaps side by side, one per named 2-D matrix (e.g. the steps of attention computed by
    hand: queries, scores, weights, ...). Diverging colours centred on 0; NaN cells stay blank (a
    masked score). Rows are labelled by ``row_labels``; columns by ``col_labels`` where a matrix has
    that many columns, by index otherwise."""
    if not matrices:
        raise ValueError("matrix_grid needs at least one named matrix")
    rows = [_label(i, _printable(t)) for i, t in enumerate(row_labels)]
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.03)
    for c, name in enumerate(names, start=1):
        m = np.asarray(matrices[name], dtype=float)
        if m.ndim != 2 or m.shape[0] != len(rows):
            raise ValueError(f"matrix_grid: {name!r} must be a 2-D array with {len(rows)} rows (one per "
                             f"row label); got shape {m.shape}")
        if col_labels is not None and m.shape[1] == len(col_labels):
            cols = [_label(j, _printable(t)) for j, t in enumerate(col_labels)]
        else:
            cols = [str(j) for j in range(m.shape[1])]
        fig.add_trace(go.Heatmap(z=m, x=cols, y=rows, colorscale="RdBu", zmid=0, showscale=False,
                                 hovertemplate=f"{_html(name)}<br>%{{y}} · %{{x}}: %{{z:.3f}}<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", showticklabels=c == 1, row=1, col=c)
    fig.update_xaxes(tickangle=0 if len(rows) <= 8 else -90)
    fig.update_layout(height=120 + 22 * len(rows), width=max(500, 230 * len(names)))
    return style(fig, title, presentation)


# ---------------------------------------------------------------------------------------------
# Scaling figures (notebook 06_scaling)
# ---------------------------------------------------------------------------------------------

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
    df = _require_frame(runs, "scaling_plot", [x, y])
    _require_numeric(df, "scaling_plot", [x, y])
    bad = df.index[~((df[x] > 0) & (df[y] > 0) & np.isfinite(df[x]) & np.isfinite(df[y]))]
    if len(bad):
        raise ValueError(f"scaling_plot: log axes need finite {x!r} and {y!r} > 0; rows {list(bad)[:10]} are not "
                         "(failed runs? lmkit.scaling.usable_runs drops them)")
    if fit is not None and not isinstance(fit, PowerLaw):
        raise TypeError(f"scaling_plot: fit must be a PowerLaw (lmkit.scaling.fit_power_law) or None; "
                        f"got {type(fit).__name__}")
    names = [_html(str(n)) for n in (df["run"] if "run" in df else df.index)]
    params = df["parameters"] if "parameters" in df else pd.Series(np.nan, index=df.index)
    fig = go.Figure(go.Scatter(
        x=df[x], y=df[y], mode="markers", name="runs", marker=dict(size=10, color=COLORWAY[0]),
        customdata=np.array(list(zip(names, params.tolist(), strict=True)), dtype=object),
        hovertemplate=f"%{{customdata[0]}}<br>parameters %{{customdata[1]:,}}<br>{_html(x)} %{{x:.3g}}"
                      f"<br>{_html(y)} %{{y:.4g}}<extra></extra>"))
    if fit is not None:
        xs = np.geomspace(df[x].min() / 1.5, df[x].max() * 1.5, 100)  # a little beyond the runs on each side
        fig.add_scatter(x=xs, y=fit(xs), mode="lines", name=f"{fit.formula(SYMBOLS.get(x, x))} (R² {fit.r2:.3f})",
                        line=dict(color=COLORWAY[1], dash="dash"), hoverinfo="skip")
    fig.update_xaxes(type="log", title_text=_SCALING_AXES.get(x, x))
    fig.update_yaxes(type="log", title_text=_SCALING_AXES.get(y, y))
    fig.update_layout(height=420, legend=dict(yanchor="top", y=0.99, xanchor="right", x=0.99))
    return style(fig, title, presentation)


# ---------------------------------------------------------------------------------------------
# Fine-tuning figures (notebook 04_finetuning)
# ---------------------------------------------------------------------------------------------

def metric_curves(histories: Mapping[str, pd.DataFrame], column: str = "val_loss", title: str | None = None,
                  presentation: bool = False) -> go.Figure:
    """One line per named run: ``column`` of each ``Trainer.metrics`` table against the step (rows
    without a value are skipped), e.g. the validation loss of each fine-tuning method."""
    if not histories:
        raise ValueError("metric_curves needs at least one named metrics table")
    fig = go.Figure()
    colours = _colour_map(histories)
    for name, history in histories.items():
        colour = colours[name]
        df = _require_frame(history, f"metric_curves[{name!r}]", ["step", column]).dropna(subset=[column])
        fig.add_scatter(x=df["step"], y=df[column], mode="lines+markers", name=_html(str(name)),
                        line=dict(color=colour),
                        hovertemplate=f"{_html(str(name))}<br>step %{{x}}<br>{column} %{{y:.4g}}<extra></extra>")
    fig.update_layout(xaxis_title="step", yaxis_title=column.replace("_", " "), height=380)
    return style(fig, title, presentation)


def method_comparison(results: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "macro_f1"),
                      baseline: Mapping[str, float] | None = None, title: str | None = None,
                      presentation: bool = False) -> go.Figure:
    """Grouped bars: one group per row of ``results`` (indexed by method name), one bar per metric
    (values in [0, 1]); ``baseline`` ({metric: value}) draws a dashed line per metric, e.g. the
    majority-class baseline, so a bar below it is worse than always guessing the commonest class."""
    df = _require_frame(results, "method_comparison", list(metrics))
    _require_numeric(df, "method_comparison", list(metrics))
    names = [_html(str(n)) for n in df.index]
    colours = _colour_map(metrics)
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
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[_html(str(n)) for n in names],
                        horizontal_spacing=0.04)
    for c, name in enumerate(names, start=1):
        m = confusions[name]
        if not isinstance(m, pd.DataFrame) or m.shape[0] != m.shape[1] or list(m.index) != list(m.columns):
            raise ValueError(f"confusion_matrices: {name!r} must be a square DataFrame with the same labels on rows "
                             f"(true) and columns (predicted); got {type(m).__name__} {getattr(m, 'shape', '')}")
        counts = m.to_numpy(dtype=float)
        z = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None) if normalize else counts
        labels = [_html(str(v)) for v in m.index]
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


# ---------------------------------------------------------------------------------------------
# Evaluation figures (notebook 05_evaluation)
# ---------------------------------------------------------------------------------------------

_RELIABILITY_COLUMNS = ("lower", "upper", "count", "confidence", "accuracy")


def reliability_diagram(bins: pd.DataFrame, ece: float, title: str | None = None,
                        presentation: bool = False) -> go.Figure:
    """Accuracy per confidence bin as bars (``lmkit.evaluate.calibration``'s ``bins``: lower,
    upper, count, confidence, accuracy), the diagonal of perfect calibration, and each bin's mean
    confidence as a marker. A bar below the diagonal is overconfidence, above it underconfidence;
    the ECE (their count-weighted mean gap) is in the legend and the default title. Empty bins
    (count 0) are left out."""
    df = _require_frame(bins, "reliability_diagram", _RELIABILITY_COLUMNS)
    _require_numeric(df, "reliability_diagram", _RELIABILITY_COLUMNS)
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
    colours = _colour_map(curves)
    for name, curve in curves.items():
        who = f"robustness_plot[{name!r}]"
        df = _require_frame(curve, who, ["rate", metric])
        _require_numeric(df, who, ["rate", metric])
        df = df.sort_values("rate")
        fig.add_scatter(x=df["rate"], y=df[metric], mode="lines+markers", name=_html(str(name)),
                        line=dict(color=colours[name]),
                        hovertemplate=f"{_html(str(name))}<br>noise rate %{{x:.2f}}<br>{_html(metric)} %{{y:.3f}}"
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
    df = _require_frame(table, "run_comparison", [by, metric])
    _require_numeric(df, "run_comparison", [metric])
    _require_unique(df[by].astype(str).tolist(), "run_comparison", f"the {by!r} column")
    missing = df[by][df[metric].isna()].astype(str).tolist()
    df = df.dropna(subset=[metric])
    if df.empty:
        raise ValueError(f"run_comparison: no row has a value for {metric!r}; every run is NaN")
    names = [_html(str(n)) for n in df[by]]
    fig = go.Figure(go.Bar(
        x=df[metric], y=names, orientation="h", marker_color=COLORWAY[0], name=metric.replace("_", " "),
        text=[f"{v:.3g}" for v in df[metric]], textposition="outside",
        hovertemplate=f"%{{y}}<br>{_html(metric)} %{{x:.4g}}<extra></extra>"))
    if missing:
        fig.add_annotation(text=_html(f"no {metric}: {', '.join(missing)}"), showarrow=False, xref="paper",
                           yref="paper", x=0, y=-0.2, xanchor="left", yanchor="top")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text=metric.replace("_", " "))
    fig.update_layout(height=140 + 32 * len(df), showlegend=False, margin=dict(b=90 if missing else None))
    return style(fig, title, presentation)
