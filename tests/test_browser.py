"""A real browser: JupyterLab (headless, on 127.0.0.1) opens 02_attention.ipynb, runs all cells, and
shows a plotly heatmap and the explorer's sliders. Needs Debian's chromium (`.ci/run` installs it);
skipped, saying so, where it is absent. The screenshot lands in the test's temp folder."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lmkit.runs import NOTEBOOK_DIR

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
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"],
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
