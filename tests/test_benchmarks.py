"""The benchmark suite runs (each benchmark's --quick setting) and records its rows with machine info.

These check that the benchmarks work, not how fast anything is: speed is measured by `make bench`."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import benchmarks.common as common

# what a copy of the repository leaves out: built, fetched or written things, none of them needed to run
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "runs", "prepared", "__pycache__", "*.egg-info", ".pytest_cache",
                                    ".ruff_cache", "results")


@pytest.mark.slow
@pytest.mark.network  # bench_data fetches the Shakespeare corpus (cached in data/raw after the first time)
def test_every_benchmark_runs_quickly_from_a_copy_of_the_repository_with_nothing_beside_it(tmp_path):
    """``python -m benchmarks --quick`` as a user types it, in a copy of the repository in an otherwise
    empty folder: every file a benchmark needs must be inside the repository (a clean clone has no
    folders beside it)."""
    repo = tmp_path / "alone" / "lmkit"
    shutil.copytree(common.REPO_ROOT, repo, ignore=NOT_COPIED)
    assert sorted(p.name for p in repo.parent.iterdir()) == ["lmkit"]
    env = {**os.environ, "PYTHONPATH": str(repo)}  # the copy's lmkit, not the checkout's editable install
    env.pop("LMKIT_DATA_DIR", None)
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {p.stem: pd.read_csv(p) for p in (repo / "benchmarks" / "results").glob("*.csv")}
    assert set(results) == {"train_throughput", "time_to_loss", "generation", "attention", "data", "sweep", "memory"}
    for table in results.values():
        assert len(table) >= 1 and {"when", "cpu", "threads", "torch", "device"} <= set(table.columns)


def test_the_shipped_tiny_shakespeare_is_intact_and_a_changed_copy_is_refused(tmp_path, monkeypatch):
    assert common.text_file(common.TINY_SHAKESPEARE) == common.TINY_SHAKESPEARE  # its SHA-256 matches
    changed = tmp_path / "input.txt"
    changed.write_bytes(common.TINY_SHAKESPEARE.read_bytes().replace(b"First Citizen", b"Second Citizen", 1))
    monkeypatch.setattr(common, "TINY_SHAKESPEARE", changed)
    with pytest.raises(SystemExit, match=r"input.txt: SHA-256 [0-9a-f]{64} is not the shipped file's"):
        common.text_file(changed)
    with pytest.raises(SystemExit, match="no such file"):
        common.text_file(tmp_path / "missing.txt")


def test_record_appends_rows_with_machine_info_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    common.record("demo", [{"what": "a", "ms": 1.5}])
    common.record("demo", [{"what": "b", "ms": 2.5}])
    table = pd.read_csv(tmp_path / "demo.csv")
    assert table["what"].tolist() == ["a", "b"] and table["ms"].tolist() == [1.5, 2.5]
    assert (table["threads"] >= 1).all() and table["device"].eq("cpu").all()
    assert "== demo ==" in capsys.readouterr().out


def test_alternate_times_every_contender_in_each_round_after_a_warm_up():
    calls = []
    times = common.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then alternating rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_record_keeps_old_rows_when_a_benchmark_gains_a_column(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    common.record("demo", [{"what": "a", "ms": 1.5}])
    common.record("demo", [{"what": "b", "ms": 2.5, "ratio": 1.2}])
    table = pd.read_csv(tmp_path / "demo.csv")
    assert table["what"].tolist() == ["a", "b"] and table["ms"].tolist() == [1.5, 2.5]
    assert pd.isna(table["ratio"][0]) and table["ratio"][1] == 1.2
    assert table["device"].eq("cpu").all() and not list(tmp_path.glob(".*"))  # no temporary file left


def test_mfu_is_read_against_the_published_peak_on_a_known_gpu(monkeypatch):
    import torch

    from benchmarks.bench_train import reference_peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    assert reference_peak(torch.device("cuda"), 2.5e14) == (312e12, "published")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Future GPU")
    assert reference_peak(torch.device("cuda"), 2.5e14) == (2.5e14, "measured matmul")
    assert reference_peak(torch.device("cpu"), 1.7e11) == (1.7e11, "measured matmul")


def test_data_benchmark_reads_its_settings_from_01_datas_parameters_cell(tmp_path):
    import nbformat

    from benchmarks.bench_data import NOTEBOOK_SETTINGS, notebook_settings
    from lmkit.runs import NOTEBOOK_DIR

    settings = notebook_settings()
    assert set(settings) == set(NOTEBOOK_SETTINGS) and settings["keep"] == "modern" and settings["lowercase"] is False
    nb = nbformat.read(NOTEBOOK_DIR / "01_data.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace("min_chars: int = 1000", "min_chars: int = 500")
    assert "min_chars: int = 500" in cell.source
    nbformat.write(nb, tmp_path / "changed.ipynb")
    assert notebook_settings(tmp_path / "changed.ipynb")["min_chars"] == 500  # read, not written twice
    cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("num_perm"))
    nbformat.write(nb, tmp_path / "without.ipynb")
    with pytest.raises(ValueError, match=r"without.ipynb.*\['num_perm'\].*NOTEBOOK_SETTINGS"):
        notebook_settings(tmp_path / "without.ipynb")
