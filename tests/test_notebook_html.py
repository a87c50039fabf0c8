"""Exported notebook pages: offline, and their formulas drawn as MathML instead of left as LaTeX source.

(tests/test_browser.py opens such a page in Chromium and checks what a reader sees.)"""

import logging
import re
import shutil
from html.parser import HTMLParser

import nbformat
import pytest
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

from lmkit.notebook_html import export_html, mathml
from lmkit.runs import NOTEBOOK_DIR, numbered_notebooks


class VisibleText(HTMLParser):
    """The text a reader of the page sees: everything outside <script>, <style> and <math>'s markup."""

    def __init__(self):
        super().__init__()
        self.hidden, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def visible_text(page: str) -> str:
    parser = VisibleText()
    parser.feed(page)
    return "".join(parser.parts)


def formulas(notebook) -> list[str]:
    """The LaTeX of every formula in a notebook's Markdown cells, as nbconvert finds it."""
    found = []

    class Collect(IPythonRenderer):
        def inline_math(self, body):
            found.append(body)
            return ""

        block_math = inline_math

        def latex_environment(self, name, body):
            found.append(body)
            return ""

    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            MarkdownWithMath(renderer=Collect(escape=False)).render(cell.source)
    return found


def test_every_formula_in_the_notebooks_becomes_mathml_without_leftover_latex():
    every = [f for nb in numbered_notebooks() for f in formulas(nb)]
    assert len(every) >= 43  # 06_scaling alone has 43
    for latex in every:
        out = mathml(latex)
        assert out.startswith("<math") and out.endswith("</math>"), (latex, out)
        assert not re.search(r">\\[A-Za-z]", out), (latex, out)  # an unknown command would show as \name


def test_an_exported_page_shows_no_latex_source(tmp_path):
    notebook = shutil.copy(NOTEBOOK_DIR / "06_scaling.ipynb", tmp_path)
    page = export_html(notebook).read_text(encoding="utf-8")
    assert page.count("<math ") == len(formulas(notebook)) == 43
    assert 'display="block"' in page  # $$...$$ is a displayed formula
    text = visible_text(page)
    assert "$" not in text and "\\alpha" not in text
    assert 'src="http' not in page.split("<body", 1)[1]  # and nothing fetched from a CDN


def test_latex_the_converter_cannot_read_is_shown_as_code_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lmkit.notebook_html"):
        out = mathml(r"\frac{a}{")
    assert out == r'<code class="lmkit-math-source">\frac{a}{</code>'
    assert "could not convert" in caplog.text


@pytest.mark.parametrize("markdown, expected", [
    (r"inline $x^2$ and $y$", 2), (r"$$\sum_i x_i$$", 1), ("\\begin{equation}E = mc^2\\end{equation}", 1),
    ("prices of 5 dollars", 0)])
def test_each_way_of_writing_math_is_converted(tmp_path, markdown, expected):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown)]
    nbformat.write(nb, tmp_path / "m.ipynb")
    page = export_html(tmp_path / "m.ipynb").read_text(encoding="utf-8")
    assert page.count("<math ") == expected
    assert "$" not in visible_text(page) and "\\begin" not in visible_text(page)
