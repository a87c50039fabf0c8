"""Executed notebooks as self-contained HTML pages that open offline, formulas included.

nbconvert's JupyterLab page, minus its CDN scripts (the ``offline`` template in
``assets/nbconvert``: no require.js, MathJax, Mermaid or widget manager from the network); plotly
figures carry plotly.js in their outputs. Without MathJax a formula would reach the reader as its
LaTeX source (``$\\alpha_N$``), so the math nbconvert finds in Markdown — ``$…$``, ``$$…$$``,
``\\(…\\)``, ``\\[…\\]`` and ``\\begin{…}`` environments — is converted to MathML at export time
(``latex2mathml``), which browsers draw natively (MathML Core: Chromium 109+, Firefox, Safari).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import latex2mathml.converter
import nbformat
from jinja2 import pass_context
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "assets" / "nbconvert"


def mathml(latex: str, display: str = "inline") -> str:
    """``latex`` as a MathML element (``display`` "inline" or "block"); LaTeX the converter cannot
    read is shown as code with a warning, never as a broken page."""
    try:
        return latex2mathml.converter.convert(latex.strip(), display=display)
    except Exception as e:  # the converter raises several unrelated types for malformed input
        log.warning("could not convert %r to MathML (%s: %s); shown as its source", latex, type(e).__name__, e)
        return f'<code class="lmkit-math-source">{html.escape(latex)}</code>'


class MathMLRenderer(IPythonRenderer):
    """nbconvert's Markdown renderer, with math drawn as MathML instead of left for MathJax."""

    def inline_math(self, body: str) -> str:
        return mathml(body, "inline")

    def block_math(self, body: str) -> str:
        return mathml(body, "block")

    def latex_environment(self, name: str, body: str) -> str:
        return mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")


class OfflineHTMLExporter(HTMLExporter):
    """The ``offline`` template, with Markdown (cells and Markdown outputs) rendered by ``MathMLRenderer``."""

    def __init__(self, **kw):
        super().__init__(template_name="offline", extra_template_basedirs=[str(TEMPLATES)], **kw)

    @pass_context  # a Jinja filter that sees the cell being rendered (its attachments)
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        renderer = MathMLRenderer(
            escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
            path=context.get("resources", {}).get("metadata", {}).get("path", ""),
            anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links,
            **self.lexer_options)
        return MarkdownWithMath(renderer=renderer).render(source)


def export_html(notebook) -> Path:
    """Write ``notebook`` as a self-contained HTML page beside it (``.html``); returns its path."""
    notebook = Path(notebook)
    body, _ = OfflineHTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out
