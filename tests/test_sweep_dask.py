"""Sweeps beyond the local pool: the same sweep through a Dask LocalCluster and through `--scheduler`
(a scheduler and a worker started here on 127.0.0.1), a worker killed mid-run, `--resume`, one device
group per run, CPU threads per run, and the refusals — each before anything is written."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmkit import executors, runs
from lmkit.cli import main

from .test_sweep import GRID, make_notebook, records, write_notebook

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.notebook  # Jupyter kernels and Dask processes (make test-fast leaves the file out)

SHOWN = ["a", "b", "status", "error", "product", "best_val_loss", "final_val_loss"]


@pytest.fixture(autouse=True)
def environment_left_as_found():
    """A LocalCluster's nannies set OMP_NUM_THREADS=1 (and MKL_, OPENBLAS_, MALLOC_TRIM_THRESHOLD_) in the
    process that starts them: every later test, and every notebook kernel nbval starts, would train on
    one thread (measured: make test 36 min instead of 22)."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return write_notebook(tmp_path_factory.mktemp("nb") / "toy.ipynb")


def write_probe_notebook(path):
    """A notebook that reports what its kernel was given: devices, threads, and when it ran; `wait`
    seconds of sleep first (none once the sweep folder holds a file `killed`), its kernel's pid in
    `run_dir/kernel.pid` (so a test can look for it)."""
    return make_notebook(path,
                         "from typing import Optional\n"
                         "i: int = 0  # which run\n"
                         "wait: float = 0.0  # seconds to sleep\n"
                         "run_dir: Optional[str] = None  # from the sweep",
                         ["import os, pathlib, time\nimport torch\n"
                          "started = time.time()\n"
                          "pathlib.Path(run_dir, 'kernel.pid').write_text(str(os.getpid()))\n"
                          "if not pathlib.Path(run_dir).parent.joinpath('killed').exists():\n"
                          "    time.sleep(wait)  # until the test has killed a worker\n"
                          "ended = time.time()"],
                         "from lmkit.notebook import summary\n"
                         "summary(visible=os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), "
                         "threads=torch.get_num_threads(), started=started, ended=ended)")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return write_probe_notebook(tmp_path_factory.mktemp("probe") / "probe.ipynb")


@pytest.fixture(scope="module")
def local_sweep(notebook, tmp_path_factory):
    return runs.sweep(notebook, GRID, runs_root=tmp_path_factory.mktemp("local"), log=lambda line: None,
                      progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_cli(*args) -> list[str]:
    """The `dask` command of this environment, as a user types it."""
    return [str(Path(sys.executable).parent / "dask"), *args]


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and one `dask worker` (one thread: one run at a time; with its nanny) as a user starts them."""
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = open(tmp_path / "dask.log", "wb")
    scheduler = subprocess.Popen(dask_cli("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                          "--no-dashboard"), stdout=logs, stderr=logs)
    worker = subprocess.Popen(dask_cli("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                       "--host", "127.0.0.1"), stdout=logs, stderr=logs)
    try:
        client = executors.dask_client(address, timeout=60)  # waits for the worker
        client.close()
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


def test_a_local_dask_cluster_gives_the_same_results_as_one_at_a_time(notebook, local_sweep, tmp_path):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        table = runs.sweep(notebook, GRID, executor=client.get_executor(), runs_root=tmp_path, log=lambda line: None,
                           progress=False)
    assert records(table[SHOWN]) == records(local_sweep[SHOWN])
    assert table["error"].iloc[2] == "ValueError: a=3 is refused (cell 2)"  # the failing cell, named
    (folder,) = tmp_path.iterdir()
    assert records(pd.read_csv(folder / "results.csv")[SHOWN]) == records(table[SHOWN])
    pids = {json.loads((Path(p) / "status.json").read_text())["pid"] for p in table["path"]}
    assert os.getpid() not in pids  # the notebooks ran in the cluster's worker processes


def test_cli_scheduler_sends_the_runs_to_the_cluster(notebook, local_sweep, cluster, tmp_path, capsys):
    assert main(["sweep", str(notebook), "-p", "a", "1", "3", "-p", "b", "0.5", "2.0", "--scheduler", cluster,
                 "--runs-root", str(tmp_path)]) == 1  # a=3 fails, as in the local sweep
    (results,) = tmp_path.glob("*/results.csv")
    assert records(pd.read_csv(results)[SHOWN]) == records(local_sweep[SHOWN])
    assert f"on the Dask scheduler at {cluster}" in capsys.readouterr().out


def wait_for(predicate, timeout=60.0, what="a condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def running_worker_pid(root: Path, i: int):
    for status in root.glob("*/*/status.json"):
        s = json.loads(status.read_text() or "{}")
        if s.get("status") == "running" and s.get("params", {}).get("i") == i and (status.parent / "kernel.pid").exists():
            return s["pid"], status.parent
    return None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_killed_mid_run_leaves_that_run_failed_or_retried(probe, cluster, tmp_path, retries):
    table = {}
    grid = [{"i": 0, "wait": 30.0}, {"i": 1, "wait": 0.0}, {"i": 2, "wait": 0.0}, {"i": 3, "wait": 0.0}]
    client = executors.dask_client(cluster)
    sweep = threading.Thread(target=lambda: table.update(t=runs.sweep(
        probe, grid, executor=client.get_executor(), retries=retries, runs_root=tmp_path, log=lambda line: None,
        progress=False)))
    sweep.start()
    try:
        pid, run = wait_for(lambda: running_worker_pid(tmp_path, 0), what="run 0 to start")
        kernel = int((run / "kernel.pid").read_text())
        (run.parent / "killed").touch()  # later attempts do not sleep
        os.kill(pid, signal.SIGKILL)  # the worker process; its nanny starts a new one
        sweep.join(timeout=180)
    finally:
        client.close()
    assert not sweep.is_alive()
    t = table["t"]
    assert t["status"].iloc[1:].tolist() == ["ok", "ok", "ok"], t["error"].tolist()
    status = json.loads((run / "status.json").read_text())
    if retries:
        assert t["status"].iloc[0] == "ok" and status["attempt"] == 2 and t["attempts"].iloc[0] == 2
        assert (run / ".attempts" / "1").is_dir()  # the dead attempt's files, set aside
    else:
        assert t["status"].iloc[0] == "failed" and status["status"] == "failed"
        assert "died" in t["error"].iloc[0] or "lost" in t["error"].iloc[0]
        assert not (run / "probe.html").exists()  # nothing there reads as a finished run
    wait_for(lambda: gone(kernel), timeout=30, what="the dead worker's kernel to exit")

    if not retries:  # --resume runs only what is missing
        folder = Path(t.attrs["folder"])
        before = {p: (Path(p) / "status.json").stat().st_mtime_ns for p in t["path"].iloc[1:]}
        resumed = runs.resume_sweep(folder, log=lambda line: None, progress=False)
        assert resumed["status"].tolist() == ["ok"] * 4
        assert {p: (Path(p) / "status.json").stat().st_mtime_ns for p in t["path"].iloc[1:]} == before
        assert resumed["path"].tolist() == t["path"].tolist()  # the same run folders


def test_resume_after_a_client_that_died_runs_only_what_did_not_finish(notebook, tmp_path, capsys):
    def log(line):
        if " ok in " in line:
            raise KeyboardInterrupt  # the client dies after its first run
    with pytest.raises(KeyboardInterrupt):
        runs.sweep(notebook, {"a": [1, 2, 4]}, runs_root=tmp_path, log=log, progress=False)
    (folder,) = tmp_path.iterdir()
    first = pd.read_csv(folder / "results.csv")
    assert first["status"].tolist() == ["ok", "pending", "pending"]
    done = Path(first["path"].iloc[0]) / "status.json"
    stamp = done.stat().st_mtime_ns
    assert main(["sweep", "--resume", str(folder)]) == 0
    again = pd.read_csv(folder / "results.csv")
    assert again["status"].tolist() == ["ok"] * 3 and again["product"].tolist() == [0.5, 1.0, 2.0]
    assert done.stat().st_mtime_ns == stamp  # the finished run was left alone


def test_each_concurrent_run_gets_its_own_devices(probe, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "cuda_device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(executors.DeviceSlots, "_pools", {})
    grid = [{"i": i, "wait": 1.5} for i in range(4)]
    table = runs.sweep(probe, grid, gpus_per_run=2, runs_root=tmp_path, log=lambda line: None, progress=False)
    assert table["status"].tolist() == ["ok"] * 4
    assert set(table["visible"]) == {"0,1", "2,3"}  # 4 devices // 2 per run: two runs at once
    spans = list(zip(table["started"], table["ended"], table["visible"], strict=True))
    overlapping = [(a, b) for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1]]
    assert overlapping and all(a[2] != b[2] for a, b in overlapping)  # runs at the same time: different devices


def test_cpu_runs_share_the_cores(probe, tmp_path):
    table = runs.sweep(probe, {"i": [0, 1]}, parallel=2, runs_root=tmp_path, log=lambda line: None, progress=False)
    assert table["threads"].tolist() == [executors.cpu_threads(2)] * 2
    assert set(table["visible"]) == {"unset"}
    alone = runs.sweep(probe, {"i": [0]}, runs_root=tmp_path, log=lambda line: None, progress=False)
    assert alone["threads"].tolist() == [executors.cpu_threads(1)]


def test_threads_and_run_counts():
    assert executors.cpu_threads(2, cores=16) == 8 and executors.cpu_threads(3, cores=2) == 1
    assert executors.runs_at_once(None, None) == 1 and executors.runs_at_once(3, None) == 3
    assert executors.runs_at_once(None, 2, devices=8) == 4 and executors.runs_at_once(2, 2, devices=8) == 2
    assert executors.runs_at_once(None, 3, devices=8) == 2  # a device left over stays unused


@pytest.mark.parametrize("args, devices, message", [
    (["--scheduler", "tcp://127.0.0.1:{port}"], 0, "no Dask scheduler answered at tcp://127.0.0.1:"),
    (["--scheduler", "127.0.0.1:8786"], 0, "is not a Dask scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:{port}", "--parallel", "2"], 0, "--parallel 2 sets the local pool"),
    (["--gpus-per-run", "1"], 0, "has no CUDA device"),
    (["--gpus-per-run", "2"], 1, "has only 1 CUDA device(s)"),
    (["--gpus-per-run", "0"], 0, "gpus_per_run=0 must be a whole number >= 1"),
    (["--retries", "-1"], 0, "retries=-1 must be a whole number >= 0"),
])
def test_cli_refuses_what_cannot_run_before_writing(notebook, tmp_path, capsys, monkeypatch, args, devices, message):
    monkeypatch.setattr(executors, "cuda_device_count", lambda: devices)
    args = [a.format(port=free_port()) for a in args]
    started = time.time()
    assert main(["sweep", str(notebook), "-p", "a", "1", *args, "--runs-root", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert time.time() - started < 30  # an unreachable scheduler: a few seconds, not a hang


def test_resume_refuses_a_folder_that_is_not_a_sweep_and_a_different_grid(notebook, local_sweep, tmp_path, capsys):
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
    folder = Path(local_sweep.attrs["folder"])
    before = (folder / "results.csv").read_bytes()
    assert main(["sweep", "--resume", str(folder), "-p", "a", "1", "2"]) == 2
    err = capsys.readouterr().err
    assert "differ from those of the sweep" in err and "'a': [1, 2]" in err
    assert main(["sweep", str(notebook), "--resume", str(folder)]) == 2
    assert "leave out" in capsys.readouterr().err
    assert (folder / "results.csv").read_bytes() == before


def test_cli_run_sends_a_whole_pipeline_to_the_cluster_as_one_task(notebook, cluster, tmp_path, capsys):
    assert main(["run", "--notebooks", str(notebook), "--scheduler", cluster, "--parameters",
                 str(write_profile(tmp_path / "params.yaml")), "--runs-root", str(tmp_path)]) == 0
    (summary,) = tmp_path.glob("*-pipeline/summary.json")
    assert json.loads(summary.read_text())["toy"]["product"] == 1.0  # a=2, b=0.5: run on the worker
    assert f"one task on a worker of {cluster}" in capsys.readouterr().out


def write_profile(path):
    path.write_text("toy:\n  a: 2\n", encoding="utf-8")
    return path


def test_cli_resume_of_a_sweep_over_a_list_of_runs(notebook, tmp_path, capsys):
    table = runs.sweep(notebook, [{"a": 1}, {"a": 3, "b": 1.0}], runs_root=tmp_path, log=lambda line: None,
                       progress=False)
    assert table["status"].tolist() == ["ok", "failed"]
    assert main(["sweep", "--resume", table.attrs["folder"]]) == 1  # a=3 fails again, and the table prints
    out = capsys.readouterr().out
    assert " a " in out and " b " in out and "a=3 is refused" in out
