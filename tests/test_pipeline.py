"""The notebook pipeline behind `make run`: parameter checks, execution, HTML export, failures."""

import json

import nbformat
import pytest

from lmkit import runs
from lmkit.cli import main


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
    assert sorted(p.name for p in out.iterdir()) == ["01_a.html", "01_a.ipynb", "02_b.html", "02_b.ipynb",
                                                     "checkpoints", "config.json", "summary.json"]
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
