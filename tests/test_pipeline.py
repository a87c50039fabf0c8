"""The notebook pipeline behind `make run`: parameter checks, execution, HTML export, failures."""

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import nbformat
import pytest

from lmkit import runs
from lmkit.cli import main

pytestmark = pytest.mark.notebook  # most tests here start Jupyter kernels (make test-fast leaves the file out)


def write_notebook(path, *sources, params="steps: int = 3  # how many\nname: str = 'x'  # a label"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_check_parameters_converts_types_and_names_unknown(tmp_path):
    nb = write_notebook(tmp_path / "01_a.ipynb")
    assert runs.check_parameters(nb, {"steps": "7", "name": 5}) == {"steps": 7, "name": "5"}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['stpes'\].*\['name', 'steps'\]"):
        runs.check_parameters(nb, {"stpes": 2})
    with pytest.raises(ValueError, match="steps='many' is not a valid int"):
        runs.check_parameters(nb, {"steps": "many"})


def test_pipeline_runs_in_order_exports_html_and_collects_summaries(tmp_path):
    summary = "from lmkit.notebook import summary\nsummary(steps=steps, name=name)"
    first = write_notebook(tmp_path / "01_a.ipynb", "import plotly.express as px\n"
                           "from lmkit.notebook import setup\nsetup()\npx.line(y=[1, 2, 3])", summary)
    nbformat_nb = nbformat.read(first, as_version=4)
    nbformat_nb.cells[-1].metadata["tags"] = ["summary"]
    nbformat.write(nbformat_nb, first)
    second = write_notebook(tmp_path / "02_b.ipynb", "print(steps * 2)")
    profile = tmp_path / "p.yaml"
    profile.write_text("all:\n  steps: 5\n01_a:\n  name: hello\n")
    out = runs.run_pipeline([first, second], profile=profile, runs_root=tmp_path / "runs")
    assert sorted(p.name for p in out.iterdir()) == ["01_a.html", "01_a.ipynb", "01_a.log", "02_b.html", "02_b.ipynb",
                                                     "02_b.log", "checkpoints", "config.json", "summary.json"]
    summaries = json.loads((out / "summary.json").read_text())
    assert summaries["01_a"]["steps"] == 5 and summaries["01_a"]["name"] == "hello"  # parameters took effect
    executed = nbformat.read(out / "02_b.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "10\n"
    page = (out / "01_a.html").read_text()
    assert "plotly" in page and 'src="http' not in page.split("<body", 1)[1]  # plotly.js inline, no CDN


def test_failing_notebook_is_named_with_its_cell_and_earlier_outputs_stay(tmp_path, capsys):
    ok = write_notebook(tmp_path / "01_ok.ipynb", "print('fine')")
    bad = write_notebook(tmp_path / "02_bad.ipynb", "x = 1", "raise ValueError('corpus is empty')")
    with pytest.raises(runs.PipelineError, match=r"02_bad.ipynb failed in cell 2 .*ValueError: corpus is empty"):
        runs.run_pipeline([ok, bad], runs_root=tmp_path / "runs")
    (out,) = (tmp_path / "runs").iterdir()
    assert (out / "01_ok.html").exists() and (out / "02_bad.ipynb").exists()
    assert main(["run", "--notebooks", str(ok), str(bad), "--runs-root", str(tmp_path / "runs2")]) == 1
    assert "02_bad.ipynb failed in cell 2" in capsys.readouterr().err


def test_bad_profile_is_refused_before_anything_runs(tmp_path):
    nb = write_notebook(tmp_path / "01_a.ipynb")
    profile = tmp_path / "p.yaml"
    for text, message in (("01_a:\n  stepz: 1\n", "stepz"), ("03_x:\n  steps: 1\n", "03_x"),
                          ("- 1\n", "must map")):
        profile.write_text(text)
        with pytest.raises(ValueError, match=message):
            runs.run_pipeline([nb], profile=profile, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_store_checked_outputs_keeps_only_tagged_cells(tmp_path):
    nb = write_notebook(tmp_path / "01_a.ipynb", "print('kept')", "print('/tmp/somewhere')")
    node = nbformat.read(nb, as_version=4)
    node.cells[1].metadata["tags"] = [runs.CHECKED_TAG]
    nbformat.write(node, nb)
    out = runs.run_pipeline([nb], runs_root=tmp_path / "runs")
    assert runs.store_checked_outputs(out / nb.name, nb) == 1
    stored = nbformat.read(nb, as_version=4)
    assert stored.cells[1].outputs[0]["text"] == "kept\n"
    assert stored.cells[1].execution_count == 2  # nbval ignores stored outputs of cells that never ran
    assert stored.cells[2].outputs == [] and stored.cells[2].execution_count is None


# ------------------------------------------------------------------------- what `make run` shows

SPEAKING_CELL = ("import logging, sys\nfrom lmkit.notebook import setup\nsetup()\n"
                 "logging.getLogger('lmkit.demo').info('cleaned 3 documents')\n"
                 "logging.getLogger('lmkit.demo').warning('2 documents have no letters')\n"
                 "print('a line on stdout'); print('a line on stderr', file=sys.stderr)")
SLOW_CELL = "import time\ntime.sleep(2.5)  # a slow cell"
NOISE = ("Input Notebook", "Output Notebook", "Executing notebook", "IPKernelApp", "without encryption", "WARNING",
         "a line on stdout", "cleaned 3 documents")


def speaking_notebooks(tmp_path):
    first = write_notebook(tmp_path / "01_speaks.ipynb", SPEAKING_CELL, SLOW_CELL,
                           "from lmkit.notebook import summary\nsummary(steps=steps, loss=1.23456)")
    node = nbformat.read(first, as_version=4)
    node.cells[-1].metadata["tags"] = ["summary"]
    nbformat.write(node, first)
    second = write_notebook(tmp_path / "02_quiet.ipynb", "x = steps * 2")
    return first, second


def run_in_terminal(args, cwd, columns=120) -> str:
    """Run ``args`` on a pseudo-terminal of ``columns`` × 30, as a person at a terminal does; return what
    it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the terminal's size decides
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            break
        if ready and not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.mark.slow
def test_run_in_a_terminal_shows_one_line_per_notebook_and_leaves_the_rest_to_its_log(tmp_path):
    first, second = speaking_notebooks(tmp_path)
    shown = run_in_terminal([sys.executable, "-m", "lmkit", "run", "--notebooks", str(first), str(second),
                             "--runs-root", str(tmp_path / "runs")], cwd=tmp_path)
    screens = shown.replace("\r\n", "\n").split("\n")
    lines = [line.split("\r")[-1].rstrip() for line in screens]  # what stays on screen once the bar is redrawn
    assert not [word for word in NOISE if word in shown], shown  # nothing of papermill, the kernel or the cells
    # one line per notebook, left showing how it ended, then its headline numbers
    bars = [line for line in lines if line.startswith(("01_speaks", "02_quiet "))]
    assert len(bars) == 2 and all("cells" in b and b.endswith("done") for b in bars), lines
    assert "4/4 cells" in bars[0] and "2/2 cells" in bars[1]
    assert lines[lines.index(bars[0]) + 1].strip() == "loss 1.235, steps 3"
    # while it ran: the clock moved during the slow cell, which the line named
    during = [s for s in shown.split("\r") if "running cell 3: time.sleep(2.5)" in s]
    assert len({s.split("cells")[1].split(",")[0].strip() for s in during}) >= 2, during  # two different times
    assert "pipeline finished: 2 notebook(s)" in shown

    (out,) = (tmp_path / "runs").iterdir()
    log = (out / "01_speaks.log").read_text()
    for said in ("Input Notebook", "Executing notebook with kernel: python3", "== cell 2 (index 1): setup()",
                 "cleaned 3 documents", "WARNING lmkit.demo: 2 documents have no letters", "a line on stdout",
                 "a line on stderr", "== finished in"):
        assert said in log, (said, log)
    # the kernel's own output lands in the log too, and it has no cause to warn: its sockets are encrypted
    assert "without encryption" not in log and "IPKernelApp" not in log


@pytest.mark.slow
def test_run_into_a_pipe_prints_a_line_as_each_notebook_starts_and_ends(tmp_path):
    first, second = speaking_notebooks(tmp_path)
    done = subprocess.run([sys.executable, "-m", "lmkit", "run", "--notebooks", str(first), str(second),
                           "--runs-root", str(tmp_path / "runs"), "-f", str(_steps(tmp_path, 4))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and not done.stderr, (done.stdout, done.stderr)  # no bar redrawing in a file
    lines = done.stdout.splitlines()
    assert lines[1:5] == ["01_speaks: running with {'steps': 4}", lines[2], "02_quiet: running with {'steps': 4}",
                          lines[4]]
    assert lines[2].startswith("01_speaks: done in ") and lines[2].endswith(" s: loss 1.235, steps 4")
    assert lines[4].startswith("02_quiet: done in ") and lines[4].endswith(" s")


def test_notebook_messages_read_as_output_and_warnings_as_warnings_in_the_notebook_and_its_page(tmp_path):
    first, _ = speaking_notebooks(tmp_path)
    out = runs.run_pipeline([first], runs_root=tmp_path / "runs", log=lambda _: None)
    cell = nbformat.read(out / first.name, as_version=4).cells[1]
    streams = [(o["name"], o["text"]) for o in cell.outputs if o["output_type"] == "stream"]
    stdout = "".join(text for name, text in streams if name == "stdout")
    stderr = "".join(text for name, text in streams if name == "stderr")
    assert stdout == "cleaned 3 documents\na line on stdout\n"  # lmkit's INFO as ordinary output, no prefix
    assert stderr == "WARNING lmkit.demo: 2 documents have no letters\na line on stderr\n"
    page = (out / "01_speaks.html").read_text()
    stderr_blocks = page.split('data-mime-type="application/vnd.jupyter.stderr"')[1:]
    assert stderr_blocks and all("cleaned 3 documents" not in block.split("</pre>")[0] for block in stderr_blocks)
    assert any("2 documents have no letters" in block.split("</pre>")[0] for block in stderr_blocks)


def _steps(tmp_path, steps: int):
    path = tmp_path / "steps.yaml"
    path.write_text(f"all:\n  steps: {steps}\n")
    return path


def test_headline_numbers_wrap_between_numbers_never_inside_one():
    numbers = {"documents": 77, "kept": 42, "near_duplicate_clusters": 35, "train_tokens": 4562900,
               "val_loss": 1.64712, "run": "20261201-093927-training"}
    assert runs.headline(numbers) == ("documents 77, kept 42, near_duplicate_clusters 35, train_tokens 4562900, "
                                      "val_loss 1.647, run 20261201-093927-training")
    wrapped = runs.headline(numbers, width=60, indent=4).splitlines()
    assert wrapped == ["    documents 77, kept 42, near_duplicate_clusters 35,",
                       "    train_tokens 4562900, val_loss 1.647,", "    run 20261201-093927-training"]
    assert all(len(line) <= 60 for line in wrapped)
