"""The benchmark suite runs (each benchmark's --quick setting) and records its rows with machine info.

These check that the benchmarks work, not how fast anything is: speed is measured by `make bench`."""

import pandas as pd
import pytest

import benchmarks.common as common
from benchmarks.__main__ import NAMES, main


@pytest.mark.slow
@pytest.mark.network  # bench_data fetches the Shakespeare corpus (cached after the first time)
@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_runs_quickly_and_records_a_stamped_row(name, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert main([name, "--quick"]) == 0
    (path,) = tmp_path.glob("*.csv")
    table = pd.read_csv(path)
    assert len(table) >= 1 and {"when", "cpu", "threads", "torch", "device"} <= set(table.columns)


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
