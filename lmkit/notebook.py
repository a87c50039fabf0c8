"""Helpers for the numbered notebooks: one set-up call and a headline-numbers cell.

``setup(seed)`` is the first call of every notebook: it seeds everything, makes plotly figures
render offline (plotly.js embedded in the output, no CDN, no MathJax), shows lmkit's log messages
as ordinary output (warnings as warnings, see ``lmkit.logs``), and returns the device.
``summary(...)`` shows a notebook's headline numbers and stores them as JSON in the cell's output,
where ``lmkit.runs.run_pipeline`` collects them. ``skip_section(marker, when=...)`` switches a whole
section off with one call: the cells that start with ``# <marker>`` then do nothing.
"""

from __future__ import annotations

import html
import json

from .device import auto_device, seed_everything
from .logs import show_logs

SUMMARY_TAG = "summary"  # the cell tag the pipeline reads headline numbers from
_SKIPPED: set[str] = set()  # section markers whose cells this kernel skips (skip_section)


def setup(seed: int = 0, device: str = "auto"):
    """Seed python/numpy/torch, set offline plotly rendering, show lmkit's INFO messages on stdout and
    its warnings on stderr; return the device."""
    import plotly.io as pio

    if "lmkit_notebook" not in pio.renderers:
        pio.renderers["lmkit_notebook"] = _offline_notebook_renderer()
    pio.renderers.default = "plotly_mimetype+lmkit_notebook"  # live in JupyterLab, self-contained in HTML
    pio.defaults.mathjax = False  # MathJax would be fetched from a CDN
    show_logs(info_stream="stdout")  # stderr is drawn pink in Jupyter: only warnings belong there
    seed_everything(seed)
    return auto_device(device)


def _offline_notebook_renderer():
    """plotly's "notebook" renderer (plotly.js embedded once per notebook) minus the MathJax
    ``<script src=...cdn...>`` it adds to every figure, so exported notebooks need no network."""
    import re

    from plotly.io._base_renderers import NotebookRenderer

    cdn_mathjax = re.compile(r'<script src="https?://[^"]*mathjax[^"]*"></script>')

    class OfflineNotebookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict):
            bundle = super().to_mimebundle(fig_dict)
            bundle["text/html"] = cdn_mathjax.sub("", bundle["text/html"])
            return bundle

    return OfflineNotebookRenderer(connected=False)


class Summary:
    """Headline numbers: a small table in the notebook, JSON for the pipeline."""

    def __init__(self, numbers: dict):
        self.numbers = {k: _plain(v) for k, v in numbers.items()}

    def _repr_mimebundle_(self, include=None, exclude=None):
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in self.numbers.items())
        return {"application/json": self.numbers, "text/html": f"<table>{rows}</table>",
                "text/plain": "\n".join(f"{k}: {_fmt(v)}" for k, v in self.numbers.items())}


def summary(**numbers) -> Summary:
    """Show ``numbers`` as a table; tag the cell ``summary`` so the pipeline collects them."""
    return Summary(numbers)


def _plain(v):
    """numpy scalars and other number-likes → JSON-able Python values."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    json.dumps(v)
    return v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def skip_section(marker: str, when: bool, reason: str = "") -> bool:
    """One switch for a section of a notebook instead of an ``if`` in each of its cells: while ``when``
    holds, every cell run afterwards whose first line is ``# <marker>`` is replaced by ``pass`` before
    IPython runs it (so a parameter such as ``instruct_steps = 0`` turns a whole task off). Called
    again with ``when=False`` (the parameter changed, the cell re-run), the section runs again.
    Prints ``reason`` when skipping; returns ``when``."""
    from IPython import get_ipython  # only notebooks (and IPython) call this

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("skip_section works in a notebook (an IPython kernel), where cells run one by one")
    if _skip_marked_cells not in shell.input_transformers_post:
        shell.input_transformers_post.append(_skip_marked_cells)
    (_SKIPPED.add if when else _SKIPPED.discard)(marker)
    if when:
        print(f"{reason or marker + ' skipped'}: the cells marked `# {marker}` do nothing")
    return when


def _skip_marked_cells(lines: list[str]) -> list[str]:
    first = lines[0].strip() if lines else ""
    if first.startswith("#") and first[1:].strip() in _SKIPPED:
        return [f"pass  # {first[1:].strip()}: skipped (skip_section)\n"]
    return lines
