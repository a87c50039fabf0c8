"""Attention figures for notebook 02_attention: one map, overviews of long inputs, the model view
and the head view (after bertviz, Vig 2019), an explorer that works in a static HTML file, raw
attention against rollout, head scores, evolution over training, and the small matrices of
attention computed by hand.

Shapes: L layers, H heads, T tokens. One attention map is (T, T): row i is query i (the position
that attends), column j is key j (the position attended to); a softmax row sums to 1. Every
function takes the array (L, H, T, T) of ``lmkit.attention.as_array`` or a model's
``output_attentions`` tuple (one (1, H, T, T) tensor per layer) as it comes; ``tokens`` is the
list of T token strings (None labels positions only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import unescape as _unescape_html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..params import is_int
from .common import (
    COLORWAY,
    SEQUENTIAL,
    escaped,
    font_size,
    require_frame,
    require_numeric,
    require_unique,
    style,
)

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
    # Not lmkit.attention.as_array: that one reads a batch for analysis (it takes row batch_index of
    # (B, nh, T, T) layers and accepts any numbers), this one guards a figure of one example: a layer
    # may be (H, T, T), a batch of more than one is refused rather than cut to its first row, the
    # values must be probabilities (raw scores or inf would draw a misleading map), empty maps are
    # refused, and every message names the figure function and suggests the fix for its input.
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
    return escaped(text) if text else "∅"


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
    if not is_int(value):
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
    require_unique(out, who, f"{what}s")
    return out


def _positive_int(value: Any, who: str, what: str) -> int:
    if not is_int(value, 1):
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
    tick = font_size(presentation, 9 if n > 40 else 11)
    label_px = int(max(len(_unescape_html(lb)) for lb in labels) * tick * 0.62) + 10  # rotated key labels
    axis = dict(type="category", showgrid=False, zeroline=False, ticks="", tickfont=dict(size=tick), automargin=True)
    side = min(720, max(320, n * (tick + 10)))
    title_px = font_size(presentation, 16) + 2 * tick + 30 + (font_size(presentation, 14) + 10 if note else 0)
    left, bottom = (font_size(presentation, 12) * 12, 110) if controls else (80, 30)
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
    tick = font_size(presentation, 12)
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
    tick = font_size(presentation, 9 if n > 40 else 11)
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
        df = require_frame(scores, who, ["layer", "head"])
        known = [m for m in _HEAD_METRICS if m in df.columns]
        others = [c for c in df.columns if c not in ("layer", "head", *known)
                  and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        metrics = known + others
        if not metrics:
            raise ValueError(f"{who}: no metric columns besides layer and head; got columns {list(df.columns)}")
    else:
        df = require_frame(scores, who, ["layer", "head", metric])
        metrics = [metric]
    require_numeric(df, who, ["layer", "head", *metrics])
    pairs = list(zip(df["layer"], df["head"], strict=True))
    require_unique(pairs, who, "(layer, head) rows")
    layers, heads = sorted(df["layer"].unique()), sorted(df["head"].unique())
    cells = len(layers) * len(heads)
    tick = font_size(presentation, 11)
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
        if not is_int(step):
            raise ValueError(f"{who}: snapshot {k} has step {step!r}; steps must be ints")
        a = _attention(attn, f"{who} (snapshot at step {step})")
        if maps and a.shape[-1] != maps[0][1].shape[-1]:
            raise ValueError(f"{who}: every snapshot needs the same T (the same probe tokens); step {step} has "
                             f"T = {a.shape[-1]}, step {maps[0][0]} has T = {maps[0][1].shape[-1]}")
        lay = _index(layer, a.shape[0], f"{who} (snapshot at step {step})", "layer")
        h = _index(head, a.shape[1], f"{who} (snapshot at step {step})", "head")
        maps.append((int(step), a[lay, h]))
        base = f"Attention: layer {lay}, head {h}" if title is None else title
    require_unique([s for s, _ in maps], who, "steps")
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
                                 hovertemplate=f"{escaped(name)}<br>%{{y}} · %{{x}}: %{{z:.3f}}<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", showticklabels=c == 1, row=1, col=c)
    fig.update_xaxes(tickangle=0 if len(rows) <= 8 else -90)
    fig.update_layout(height=120 + 22 * len(rows), width=max(500, 230 * len(names)))
    return style(fig, title, presentation)
