"""Data figures for notebook 01_data: corpus overview, cleaning report, near-duplicate similarity
heatmap, train/val split, tokenizer comparison and the Zipf plot (rank against count, log–log)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import (
    COLORWAY,
    SEQUENTIAL,
    colour_map,
    escaped,
    font_size,
    require_frame,
    require_numeric,
    require_unique,
    style,
)


def _names(items: Iterable[Any], who: str, what: str) -> list[str]:
    if isinstance(items, str) or not isinstance(items, Iterable):
        raise TypeError(f"{who}: {what} must be a list of document names (or Documents); got {type(items).__name__}")
    names = [getattr(x, "name", x) for x in items]  # lmkit.data.Document objects carry .name
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{who}: {what} must hold str names or Documents; got {bad[:5]!r}")
    require_unique(names, who, what)
    return names


def _signed_share(removed_share: float) -> str:
    """The change a cleaning step made, as a signed percentage ("−1.25%")."""
    if removed_share > 0:
        return f"−{removed_share:.2%}"
    return f"+{-removed_share:.2%}" if removed_share < 0 else "0%"


def corpus_overview(
    table: pd.DataFrame, title: str = "Characters per document", presentation: bool = False
) -> go.Figure:
    """Characters per document as horizontal bars, longest on top, coloured by genre.

    ``table`` has columns ``name``, ``genre``, ``characters`` and optionally ``edition`` (shown on
    hover). One trace per genre, so the legend toggles genres.
    """
    who = "corpus_overview"
    require_frame(table, who, ["name", "genre", "characters"])
    require_numeric(table, who, ["characters"])
    require_unique(list(table["name"]), who, "names")
    df = table.sort_values("characters", ascending=False, kind="stable").copy()
    df["genre"] = df["genre"].fillna("unknown").astype(str)
    edition = df["edition"].fillna("").astype(str) if "edition" in df.columns else pd.Series("", index=df.index)
    df["_edition"] = edition
    colours = colour_map(sorted(df["genre"].unique()))
    fig = go.Figure()
    for genre, part in df.groupby("genre", sort=True):
        fig.add_trace(go.Bar(
            x=part["characters"], y=part["name"].astype(str), orientation="h", name=genre,
            marker_color=colours[genre], customdata=np.stack([part["genre"], part["_edition"]], axis=1),
            hovertemplate="%{y}<br>%{customdata[0]} %{customdata[1]}<br>%{x:,} characters<extra></extra>",
        ))
    # Horizontal bars stack categories bottom-up: list the smallest first so the largest is on top.
    order = df["name"].astype(str).tolist()[::-1]
    row = font_size(presentation, 10) + 4
    fig.update_layout(
        height=max(320, row * len(df) + 140), barmode="overlay", bargap=0.15,
        xaxis_title="characters", yaxis=dict(title="", categoryorder="array", categoryarray=order,
                                              tickfont=dict(size=font_size(presentation, 10)), automargin=True),
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
    require_frame(steps, who, ["step", *numeric])
    require_numeric(steps, who, numeric)
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
    tick = font_size(presentation, 8 if n > 40 else 10)
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
                marker=dict(symbol="square", size=font_size(presentation, 10), color=colours[part]),
                hovertemplate="%{y}: %{x}<extra></extra>",
            ))
        order = sorted(val, reverse=True) + sorted(train, reverse=True)  # bottom-up: train names on top
        default_title = f"Document split: {len(train)} train, {len(val)} val"
        xaxis = dict(title="", type="category", categoryorder="array", categoryarray=["train", "val"])
    else:
        require_frame(table, who, ["name", "characters"])
        require_numeric(table, who, ["characters"])
        require_unique(list(table["name"]), who, "table names")
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
    row = font_size(presentation, 10) + 4
    fig.update_layout(
        height=max(320, row * len(split) + 140), barmode="overlay", xaxis=xaxis,
        yaxis=dict(title="", type="category", categoryorder="array", categoryarray=order,
                   tickfont=dict(size=font_size(presentation, 10)), automargin=True),
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
    require_frame(table, who, ["tokenizer", *metrics])
    require_numeric(table, who, metrics)
    require_unique(list(table["tokenizer"]), who, "tokenizer names")
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
    colours = colour_map(freqs)
    fig = go.Figure()
    for name, df in freqs.items():
        require_frame(df, f"{who} (freqs[{name!r}])", ["rank", "count"])
        require_numeric(df, f"{who} (freqs[{name!r}])", ["rank", "count"])
        df = df[df["count"] > 0]  # log axes cannot show zero counts
        tokens = (df["token"].astype(str).map(escaped) if "token" in df.columns else df["rank"].astype(str)).to_numpy()
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
