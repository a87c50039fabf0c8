"""Export a figure: one self-contained HTML page (plotly.js inlined, no CDN), or a PNG through
kaleido and the system's Chromium (never a downloaded one). Works on any ``go.Figure``."""

from __future__ import annotations

import logging
import os
import re
import shutil
from html import escape as _escape_html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from ..files import write_bytes_atomic

# Chrome/Chromium for kaleido, in the order to_png tries them (after $BROWSER_PATH).
_BROWSER_CANDIDATES: tuple[str, ...] = (
    "/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome",
)

# kaleido talks to Chromium through choreographer, which logs a whole traceback at ERROR when a message
# from the browser does not decode as JSON, and then ignores that message: the PNG is still right. In
# a notebook the traceback reads as the cell failing (seen in make test, 02_attention's PNG export),
# so to_png keeps it at debug level: still there for whoever switches choreographer's logging up.
BROWSER_PIPE_LOGGER = "choreographer.channels.pipe"


class _IgnoredBrowserMessage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("JSONError decoding message. Ignoring"):
            return True
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("a message from the browser was not JSON and was ignored (%s)", record.exc_info[1]
                         if record.exc_info else "no detail")
        return False


def quiet_ignored_browser_messages() -> None:
    """Keep choreographer's tracebacks for browser messages it ignores out of the output (idempotent)."""
    logger = logging.getLogger(BROWSER_PIPE_LOGGER)
    if not any(isinstance(f, _IgnoredBrowserMessage) for f in logger.filters):
        logger.addFilter(_IgnoredBrowserMessage())


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
    _require_figure(fig, "to_png")
    browser = _find_browser()
    try:  # kaleido is not a dependency of lmkit (requirements.txt only): imported when a PNG is asked for
        import kaleido
        from kaleido.errors import ChromeNotFoundError
    except ImportError:
        raise RuntimeError("to_png needs kaleido >= 1 (pip install kaleido)") from None
    pio.defaults.mathjax = False  # the same for any fig.write_image in this session
    quiet_ignored_browser_messages()
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
