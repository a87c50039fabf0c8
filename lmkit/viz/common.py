"""The shared look and the input checks of every ``lmkit.viz`` figure.

One look through ``style``: the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design";
distinguishable with the common forms of colour blindness), a white template, and a
``presentation=True`` option with larger fonts for a projector. Sequential data uses "Cividis"
(Nuñez, Anderton & Renslow 2018), designed to read the same with and without colour vision
deficiency.

Inputs are checked at the boundary: a missing column or a wrong shape is a ``ValueError`` that
says what was expected and what came. The figure modules build on this one; it imports none of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

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


def font_size(presentation: bool, base: float = FONT_SIZE) -> int:
    return round(base * _SCALE) if presentation else round(base)


def style(fig: go.Figure, title: str | None = None, presentation: bool = False) -> go.Figure:
    """Apply the shared look to ``fig`` (in place) and return it.

    White template, the Okabe–Ito colourway, base font 12 px (18 px with ``presentation=True``,
    titles and subplot titles scaled alike). ``title`` replaces the figure title when given.
    """
    size = font_size(presentation)
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

def require_frame(df: Any, who: str, columns: Sequence[str]) -> pd.DataFrame:
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


def require_numeric(df: pd.DataFrame, who: str, columns: Sequence[str]) -> None:
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            raise ValueError(f"{who}: column {c!r} must be numeric; got dtype {df[c].dtype}")


def require_unique(values: Sequence[Any], who: str, what: str) -> None:
    dupes = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"{who}: {what} must be unique; these repeat: {dupes[:10]}")


def escaped(text: str) -> str:
    """Escape text for plotly's hover labels, which read ``<...>`` as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def colour_map(keys: Iterable[Any]) -> dict[Any, str]:
    return {k: COLORWAY[i % len(COLORWAY)] for i, k in enumerate(keys)}
