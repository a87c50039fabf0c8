"""A real browser: JupyterLab (headless, on 127.0.0.1) opens 02_attention.ipynb, runs all cells, and
shows a plotly heatmap and the explorer's sliders; lmkit's messages read as ordinary output there and
in an exported page, whose formulas Chromium draws. Needs Debian's chromium (`.ci/run` installs it);
skipped, saying so, where it is absent. Screenshots land in the tests' temp folders."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from lmkit import runs
from lmkit.notebook_html import export_html
from lmkit.runs import NOTEBOOK_DIR
from tests.test_pipeline import SPEAKING_CELL, write_notebook

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "lmkit-browser-test"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed "
                                 "(apt-get install -y chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK_DIR / "02_attention.ipynb", root)  # a copy: autosave must not touch the repository
    speaking_notebook(root / "speaks.ipynb")
    settings = tmp_path / "cfg" / "lab" / "user-settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    # render every cell (JupyterLab 4 otherwise only attaches cells near the viewport)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings / "apputils-extension").mkdir()
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "JUPYTER_PLATFORM_DIRS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--MappingKernelManager.transport_encryption=auto"],  # as `make lab` starts it
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    yield base
    request = urllib.request.Request(f"{base}/api/shutdown?token={TOKEN}", method="POST", data=b"")
    try:
        urllib.request.urlopen(request, timeout=10)
        server.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        server.kill()


EXPLORER_MAPS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(out => out.querySelector('.widget-slider'))
    .flatMap(out => [...out.querySelectorAll('.js-plotly-plot')])
    .map(gd => (gd._fullData || [])[0])
    .filter(trace => trace && trace.type === 'heatmap' && trace.z)
    .map(trace => { const z = Array.from(trace.z, row => Array.from(row));
                    return {rows: z.length, cols: z[0].length, first: z[0][0],
                            masked: z[0].slice(1).every(v => v === null || Number.isNaN(v))}; })"""


def test_attention_notebook_renders_heatmaps_and_sliders(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{jupyterlab}/lab/tree/02_attention.ipynb?reset&token={TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # kernel ready
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            # the last cell's OUTPUT (its source contains the same word) shows the notebook ran through;
            # on a fresh clone 02 first trains a small model: about a minute alone, many on a shared machine
            page.locator(".jp-OutputArea-output", has_text="explorer_update_ms").wait_for(timeout=1_200_000)
            page.wait_for_selector(".js-plotly-plot", state="attached", timeout=60_000)
            page.wait_for_selector(".widget-slider", state="attached", timeout=60_000)
            # the explorer's FigureWidget draws after its cell's reply, once its front-end code has loaded
            page.wait_for_function(f"({EXPLORER_MAPS})().length > 0", timeout=60_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        plots = page.locator(".js-plotly-plot").count()
        explorer_maps = page.evaluate(EXPLORER_MAPS)
        page.locator(".widget-slider").first.scroll_into_view_if_needed()
        shot = tmp_path / "02_attention.png"
        page.screenshot(path=str(shot), full_page=False)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        browser.close()
    assert shot.stat().st_size > 10_000
    assert plots >= 10  # every figure cell of the notebook rendered a plotly chart
    # the explorer's FigureWidget got its map as a typed array (lmkit.widgets.typed_array) and plotly.js
    # decoded it: the first query attends only to itself (weight 1), its future keys are blank (NaN)
    assert explorer_maps, "no heatmap inside the explorer's output"
    assert all(m["rows"] > 1 and m["rows"] == m["cols"] and m["masked"] and abs(m["first"] - 1) < 1e-3
               for m in explorer_maps), explorer_maps
    assert not tracebacks, tracebacks[:2]
    print(json.dumps({"screenshot": str(shot)}))


MATH = "The loss falls as $L = a \\cdot N^{-\\alpha_N}$ with the parameters:\n\n$$C \\approx 6 N D$$"
# text outputs: stderr, and stdout (JupyterLab marks it "...stdout", an exported page "text/plain")
STREAMS = """() => [...document.querySelectorAll('.jp-OutputArea-output.jp-RenderedText')]
    .map(out => ({stream: out.dataset.mimeType.endsWith('stderr') ? 'stderr' : 'stdout', text: out.innerText,
                  background: getComputedStyle(out).backgroundColor}))"""


def speaking_notebook(path):
    """A notebook whose cells log through lmkit (INFO and WARNING) and whose Markdown has formulas."""
    write_notebook(path, SPEAKING_CELL)
    node = nbformat.read(path, as_version=4)
    node.cells.insert(0, nbformat.v4.new_markdown_cell(MATH))
    nbformat.write(node, path)
    return path


def by_stream(streams) -> dict[str, str]:
    return {name: "".join(s["text"] for s in streams if s["stream"] == name) for name in ("stdout", "stderr")}


def test_lmkit_messages_read_as_output_in_jupyterlab_and_warnings_as_warnings(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{jupyterlab}/lab/tree/speaks.ipynb?reset&token={TOKEN}")
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.locator(".jp-OutputArea-output", has_text="a line on stderr").wait_for(timeout=120_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        streams = page.evaluate(STREAMS)
        page.screenshot(path=str(tmp_path / "speaks-lab.png"), full_page=True)
        browser.close()
    shown = by_stream(streams)
    assert "cleaned 3 documents" in shown["stdout"] and "cleaned 3 documents" not in shown["stderr"], streams
    assert "WARNING lmkit.demo: 2 documents have no letters" in shown["stderr"], streams
    assert tinted(streams) == {"stdout": False, "stderr": True}, streams
    # the kernel ran on encrypted sockets (as `make lab` starts JupyterLab), so ipykernel did not warn
    server_log = (tmp_path / "server.log").read_text()
    assert "Kernel started" in server_log and "without encryption" not in server_log, server_log[-2000:]


def tinted(streams) -> dict[str, bool]:
    """Which kinds of output are drawn on a tinted (pink) background: only stderr should be."""
    return {s["stream"]: s["background"] not in ("rgba(0, 0, 0, 0)", "transparent") for s in streams}


def test_an_exported_page_shows_formulas_and_reads_messages_as_output_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    notebook = speaking_notebook(tmp_path / "01_speaks.ipynb")
    out = runs.run_pipeline([notebook], runs_root=tmp_path / "runs", log=lambda _: None)
    pages = [out / "01_speaks.html", export_html(shutil.copy(NOTEBOOK_DIR / "06_scaling.ipynb", tmp_path))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        seen = {}
        for html in pages:
            page.goto(html.as_uri())
            page.wait_for_selector("math", state="attached", timeout=30_000)
            seen[html.name] = page.evaluate("""() => ({
                text: document.body.innerText,
                math: [...document.querySelectorAll('math')].map(m => {
                    const r = m.getBoundingClientRect(); return {w: r.width, h: r.height}; })})""")
            seen[html.name]["streams"] = page.evaluate(STREAMS)
            page.screenshot(path=str(tmp_path / f"{html.stem}.png"), full_page=False)
        browser.close()
    for name, found in seen.items():
        assert "$" not in found["text"] and "\\alpha" not in found["text"], name  # no LaTeX source left
        assert found["math"] and all(m["w"] > 5 and m["h"] > 5 for m in found["math"]), (name, found["math"])
    assert len(seen["06_scaling.html"]["math"]) == 43 and len(seen["01_speaks.html"]["math"]) == 2
    shown = by_stream(seen["01_speaks.html"]["streams"])
    assert "cleaned 3 documents" in shown["stdout"] and "cleaned 3 documents" not in shown["stderr"]
    assert "2 documents have no letters" in shown["stderr"]
    assert tinted(seen["01_speaks.html"]["streams"]) == {"stdout": False, "stderr": True}
