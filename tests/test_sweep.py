"""Parameter sweeps (`lmkit.runs.sweep`, `python -m lmkit sweep`): one run folder per combination,
failures recorded without stopping the sweep, names and types checked before anything runs, and the
results gathered into one table (results.csv, load_runs)."""

import contextlib
import json
import os
import string
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from lmkit import data, runs
from lmkit.cli import main

pytestmark = pytest.mark.notebook  # most tests here start Jupyter kernels (make test-fast leaves the file out)


PARAMS = ("from typing import Optional\n"
          "a: int = 1  # a whole number\n"
          "b: float = 0.5  # a real number\n"
          "run_dir: Optional[str] = None  # the sweep passes each run its folder")
CELLS = ("if a == 3:\n    raise ValueError(f'a={a} is refused')",
         "import json, pathlib\n"
         "if run_dir:\n"
         "    pathlib.Path(run_dir, 'metrics.jsonl').write_text(json.dumps({'step': 1, 'val_loss': a * b}) + '\\n')")
SUMMARY = "import os\nfrom lmkit.notebook import summary\nsummary(product=a * b, cwd=os.getcwd(), run='from the notebook')"
GRID = {"a": [1, 3], "b": [0.5, 2.0]}


def write_notebook(path):
    """A notebook that fails for a == 3, writes metrics into run_dir and reports a * b as its summary."""
    return make_notebook(path, PARAMS, CELLS, SUMMARY)


def make_notebook(path, parameters: str, cells, summary: str):
    """A notebook of a tagged parameters cell, ``cells`` and a tagged summary cell, written to ``path``."""
    nb = nbformat.v4.new_notebook()
    params, last = nbformat.v4.new_code_cell(parameters), nbformat.v4.new_code_cell(summary)
    params.metadata["tags"], last.metadata["tags"] = ["parameters"], ["summary"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells), last]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return write_notebook(tmp_path_factory.mktemp("nb") / "toy.ipynb")


@pytest.fixture(scope="module")
def swept(notebook, tmp_path_factory):
    """The 2×2 grid run once, one notebook at a time: (root, table, logged lines)."""
    root, lines = tmp_path_factory.mktemp("runs"), []
    table = runs.sweep(notebook, GRID, runs_root=root, name="toy", log=lines.append)
    return root, table, lines


def records(table):
    """Rows as dicts, NaN as None (NaN != NaN would fail every comparison)."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


def test_grid_runs_in_order_and_a_failure_does_not_stop_the_others(swept, notebook):
    _, table, _ = swept
    assert table[["a", "b"]].values.tolist() == [[1, 0.5], [1, 2.0], [3, 0.5], [3, 2.0]]  # last name fastest
    assert table["status"].tolist() == ["ok", "ok", "failed", "failed"]
    assert table["error"].iloc[2] == "ValueError: a=3 is refused (cell 2)"
    assert table["error"].iloc[:2].isna().all()
    ok = table.iloc[:2]
    assert ok["product"].tolist() == [0.5, 2.0]  # the summary cell, with the parameters in effect
    assert ok["best_val_loss"].tolist() == ok["final_val_loss"].tolist() == [0.5, 2.0]  # from run_dir/metrics
    assert set(ok["cwd"]) == {str(notebook.parent)}  # kernels run beside the notebook
    assert table["run"].tolist() == [os.path.basename(p) for p in table["path"]]  # the summary's `run` lost
    assert table["run"].iloc[0].endswith("-a-1-b-0.5") and (table["seconds"] > 0).all()


def test_each_run_folder_holds_status_notebook_and_html(swept, notebook):
    root, table, lines = swept
    (folder,) = root.iterdir()
    assert folder.name.endswith("-toy") and table.attrs["folder"] == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config == {"kind": "sweep", "notebook": str(notebook), "grid": GRID, "fixed": {}}
    for row in table.itertuples():
        run = root / folder / row.run
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == row.status and status["params"] == {"a": row.a, "b": row.b}
        assert status["seconds"] > 0 and (status["error"] is None) == (row.status == "ok")
        assert json.loads((run / "config.json").read_text()) == {"sweep_params": {"a": row.a, "b": row.b}}
        assert (run / "toy.ipynb").is_file() and (run / "toy.html").is_file()  # failed runs too
    assert records(pd.read_csv(folder / "results.csv")) == records(table)
    assert sum(" ok in " in line or " failed in " in line for line in lines) == 4


def test_parallel_runs_give_the_same_rows(swept, notebook, tmp_path):
    cwd = os.getcwd()
    table = runs.sweep(notebook, GRID, parallel=2, runs_root=tmp_path, log=lambda line: None)
    assert records(table.drop(columns=["run", "path", "seconds"])) == \
        records(swept[1].drop(columns=["run", "path", "seconds"]))
    assert os.getcwd() == cwd  # papermill's chdir, from two threads, is undone


def test_kernels_start_beside_the_notebook_whatever_the_process_cwd(notebook, tmp_path, monkeypatch):
    import papermill.execute

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    @contextlib.contextmanager
    def chdir_left_behind(path):  # what papermill's chdir amounts to when another thread restores first
        os.chdir(elsewhere)
        yield

    monkeypatch.setattr(papermill.execute, "chdir", chdir_left_behind)
    cwd = os.getcwd()
    table = runs.sweep(notebook, {"a": [1]}, runs_root=tmp_path / "runs", log=lambda line: None)
    assert table["cwd"].tolist() == [str(notebook.parent)]
    assert os.getcwd() == cwd


def test_results_are_written_after_each_run(notebook, tmp_path):
    def log(line):
        if " ok in " in line:
            raise KeyboardInterrupt  # the sweep dies after its first run
    with pytest.raises(KeyboardInterrupt):
        runs.sweep(notebook, {"a": [1, 2]}, runs_root=tmp_path, log=log)
    (results,) = tmp_path.glob("*/results.csv")
    assert pd.read_csv(results)["status"].tolist() == ["ok", "pending"]


@pytest.mark.parametrize("grid, fixed, parallel, message", [
    ({"a": [1], "c": [2]}, None, 1, r"unknown parameter\(s\) \['c'\].*declares \['a', 'b', 'run_dir'\]"),
    ({"a": [1]}, {"bb": 1}, 1, r"unknown parameter\(s\) \['bb'\]"),
    ([{"a": 1}, {"a": 2, "c": 3}], None, 1, r"unknown parameter\(s\) \['c'\]"),
    ({"a": [1, "two"]}, None, 1, "a='two' is not a valid int"),
    ({}, None, 1, "the grid is empty"),
    ([], None, 1, "the grid is an empty list"),
    ({"a": []}, None, 1, r"grid\['a'\] is an empty list"),
    ({"a": 2}, None, 1, r"grid\['a'\]=2 is not a list of values"),
    ({"a": [1]}, {"a": 2}, 1, r"\['a'\] both swept and fixed"),
    ({"run_dir": ["x"]}, None, 1, "run_dir is set by the sweep"),
    ({"a": [1]}, None, 0, "parallel=0 must be a whole number >= 1"),
])
def test_bad_input_is_refused_before_anything_is_created(notebook, tmp_path, grid, fixed, parallel, message):
    with pytest.raises(ValueError, match=message):
        runs.sweep(notebook, grid, fixed=fixed, parallel=parallel, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_cli_converts_strings_prints_the_table_and_exits_0(notebook, tmp_path, capsys):
    assert main(["sweep", str(notebook), "-p", "a", "2", "--set", "b", "1.5", "--runs-root", str(tmp_path),
                 "--name", "cli"]) == 0
    out = capsys.readouterr().out
    (status_file,) = tmp_path.glob("*-cli/*/status.json")
    assert json.loads(status_file.read_text())["params"] == {"a": 2, "b": 1.5}  # "2" → 2, "1.5" → 1.5
    (results,) = tmp_path.glob("*-cli/results.csv")
    assert pd.read_csv(results)["product"].tolist() == [3.0]
    assert str(results) in out and " ok " in out and "final_val_loss" in out


def test_cli_exits_1_when_a_run_failed_and_still_prints_the_table(notebook, tmp_path, capsys):
    assert main(["sweep", str(notebook), "-p", "a", "1", "3", "--runs-root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "ValueError: a=3 is refused" in captured.out and "failed" in captured.out
    assert "1 of 2 run(s) failed" in captured.err


@pytest.mark.parametrize("args, message", [
    (["-p", "c", "1"], "unknown parameter"),
    (["-p", "a", "x"], "a='x' is not a valid int"),
    (["-p", "a"], "-p a has no values"),
    (["-p", "a", "1", "-p", "a", "2"], "-p a is given twice"),
    (["-p", "a", "1", "--set", "b", "1", "--set", "b", "2"], "--set b is given twice"),
    (["-p", "a", "1", "--parallel", "0"], "parallel=0"),
])
def test_cli_exits_2_on_bad_input_before_anything_runs(notebook, tmp_path, capsys, args, message):
    assert main(["sweep", str(notebook), *args, "--runs-root", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_names_the_notebooks_when_none_matches(tmp_path, capsys):
    assert main(["sweep", "99_nothing", "-p", "a", "1", "--runs-root", str(tmp_path / "runs")]) == 2
    assert "03_training" in capsys.readouterr().err


def test_load_runs_finds_nested_runs_and_skips_containers(swept, notebook, tmp_path):
    root, table, _ = swept
    found = runs.load_runs(root)
    (folder,) = root.iterdir()
    assert found["run"].tolist() == [f"{folder.name}/{name}" for name in sorted(table["run"])]
    assert found["status"].tolist() == ["ok", "ok", "failed", "failed"]  # a-1 before a-3 by name, too
    assert found["sweep_params.a"].tolist() == [1, 1, 3, 3] and found["best_val_loss"].iloc[0] == 0.5
    assert found["error"].iloc[2].startswith("ValueError")

    pipeline = runs.run_pipeline([notebook], runs_root=tmp_path, log=lambda line: None)
    assert runs.load_runs(tmp_path).empty  # a pipeline's folder holds notebooks, not a run
    runs.new_run(tmp_path, "single", {"model": {"n_layer": 2}})
    runs.new_run(pipeline, "inner", {"model": {"n_layer": 4}})
    mixed = runs.load_runs(tmp_path).sort_values("model.n_layer")
    assert [Path(r).parent.as_posix() for r in mixed["run"]] == [".", pipeline.name]
    assert mixed["run"].str.endswith("-single").iloc[0] and mixed["run"].str.endswith("-inner").iloc[1]
    assert mixed["model.n_layer"].tolist() == [2, 4] and "status" not in mixed


# ------------------------------------------------------------------------------- the real notebook

@pytest.mark.slow
def test_training_notebook_sweep_over_heads_and_width(tmp_path):
    every_char = string.ascii_letters + string.digits + string.punctuation  # whatever the notebook prompts with
    texts = [f"Scene {i}. Enter a messenger with news of battle number {i}.\n{every_char}\n" * 30 for i in range(4)]
    data.prepare_dataset(texts, tmp_path / "prepared", val_fraction=0.25)
    smoke = yaml.safe_load((runs.NOTEBOOK_DIR / "params" / "smoke.yaml").read_text())["03_training"]
    fixed = {**smoke, "n_layer": 1, "max_steps": 10, "eval_interval": 5, "full_eval": False,
             "prepared_dir": str(tmp_path / "prepared"), "runs_root": str(tmp_path / "unused")}
    for name in ("n_head", "n_embd"):
        fixed.pop(name)
    table = runs.sweep(runs.NOTEBOOK_DIR / "03_training.ipynb", {"n_head": [2, 3], "n_embd": [16, 24]},
                       fixed=fixed, parallel=2, runs_root=tmp_path / "runs", log=lambda line: None)
    assert table[["n_head", "n_embd"]].values.tolist() == [[2, 16], [2, 24], [3, 16], [3, 24]]
    assert table["status"].tolist() == ["ok", "ok", "failed", "ok"], table["error"].tolist()
    assert "n_embd=16 is not divisible by n_head=3" in table["error"].iloc[2]
    ok = table[table["status"] == "ok"]
    assert (ok["steps"] == 10).all() and ok["val_loss"].notna().all() and ok["best_val_loss"].notna().all()
    for row in ok.itertuples():
        run = Path(row.path)
        config = json.loads((run / "config.json").read_text())
        assert (config["model"]["n_head"], config["model"]["n_embd"]) == (row.n_head, row.n_embd)
        assert config["sweep_params"]["n_head"] == row.n_head  # what the sweep recorded stays
        assert (run / "metrics.jsonl").is_file() and (run / "samples.txt").is_file()
        assert (run / "checkpoints" / "step_000010").is_dir() and (run / "03_training.ipynb").is_file()
    assert not (tmp_path / "unused").exists()  # every run trained into the folder the sweep made
