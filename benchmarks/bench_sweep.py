"""Sweeps: one 4-combination sweep of ``notebooks/03_training.ipynb`` run five ways, side by side.

What is measured: the wall time of ``lmkit.runs.sweep`` over n_layer {1, 2} × learning_rate
{1e-3, 3e-3} (tiny settings: width 64, context 64, ``--steps`` steps on the shipped tiny Shakespeare,
prepared once into a temporary folder), and each run's own seconds (kernel start to last cell):

- ``local×1``: the local pool, one run at a time (each run gets every core);
- ``local×2``: two at once, each with cores // 2 threads (what lmkit does);
- ``local×2 all cores``: two at once, each with every core (what a pool that does not share the cores
  does: a plain ``ThreadPoolExecutor(2)`` passed as the executor);
- ``dask×1`` / ``dask×2``: a ``dask.distributed.LocalCluster`` on 127.0.0.1 (a scheduler and 1 or 2
  worker processes of one thread), through ``client.get_executor()`` — the same path as
  ``--scheduler tcp://...``. The workers import lmkit before the clock starts (a worker pays that
  once, about 4 s here, not once per run).

Reported: wall seconds, speed-up over ``local×1``, the runs' summed seconds, and the engine's overhead
per run: (wall × runs at once − summed run seconds) / runs, i.e. the time a slot spends on anything
but its notebook (scheduling, the status and results files, the HTML page). Target: overhead < 2 s.
``--quick``: 2 combinations, 10 steps, three of the ways (checks that it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmkit import runs
from lmkit.data import prepare_dataset
from lmkit.executors import cpu_threads

from .common import TINY_SHAKESPEARE, record, text_file

NAME = "sweep"
TARGET_OVERHEAD_S = 2.0
NOTEBOOK = runs.NOTEBOOK_DIR / "03_training.ipynb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", type=Path, default=TINY_SHAKESPEARE, help="any UTF-8 text file (default: tiny-shakespeare)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of each run")
    parser.add_argument("--quick", action="store_true", help="2 combinations, 10 steps, 3 ways: checks that it runs")


def _fixed(data: Path, steps: int, runs_root: Path) -> dict:
    return {"prepared_dir": str(data), "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8,
            "max_steps": steps, "warmup_steps": min(20, steps // 2), "eval_interval": steps, "profile_steps": 0,
            "full_eval": False, "export_hf": False, "tensorboard": False, "runs_root": str(runs_root)}


def _ways(quick: bool):
    """(name, runs at once, runs sharing the cores, a context manager giving (executor or None, parallel))."""
    from distributed import Client, LocalCluster

    @contextlib.contextmanager
    def local(k):
        yield None, k

    @contextlib.contextmanager
    def naive(k):
        with ThreadPoolExecutor(max_workers=k) as pool:
            yield pool, None

    @contextlib.contextmanager
    def dask(k):
        saved = dict(os.environ)  # the cluster's nannies set OMP_NUM_THREADS=1 here: put it back afterwards
        with _restored(saved), LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            client.run(importlib.import_module, "lmkit.sweeps")  # a worker's first import: once per worker, untimed
            yield client.get_executor(), None

    ways = [("local×1", 1, 1, local), ("local×2", 2, 2, local), ("local×2 all cores", 2, 1, naive),
            ("dask×1", 1, 1, dask), ("dask×2", 2, 2, dask)]  # name, runs at once, cores shared by
    return [w for w in ways if w[0] in ("local×1", "local×2", "dask×2")] if quick else ways


@contextlib.contextmanager
def _restored(environ: dict):
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)


def main(args: argparse.Namespace):
    text_file(args.text)
    grid = {"n_layer": [1] if args.quick else [1, 2], "learning_rate": [1e-3, 3e-3]}
    steps = 10 if args.quick else args.steps
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_dataset(str(args.text), tmp / "data", val_fraction=0.1)
        for name, at_once, sharing, way in _ways(args.quick):
            with way(at_once) as (executor, parallel):
                started = time.perf_counter()
                table = runs.sweep(NOTEBOOK, grid, fixed=_fixed(tmp / "data", steps, tmp / "unused"), parallel=parallel,
                                   executor=executor, runs_root=tmp / "runs", name=name.replace("×", "x"),
                                   log=lambda line: None, progress=False)
                wall = time.perf_counter() - started
            if (table["status"] != "ok").any():
                raise SystemExit(f"{name}: a run failed: {table['error'].dropna().tolist()}")
            base = base or wall
            n, summed = len(table), float(table["seconds"].sum())
            rows.append({"way": name, "runs": n, "at_once": at_once, "threads_per_run": cpu_threads(sharing),
                         "wall_s": wall, "speedup": base / wall, "run_s_sum": summed,
                         "run_s_median": float(table["seconds"].median()),
                         "overhead_s_per_run": (wall * at_once - summed) / n, "target_overhead_s": TARGET_OVERHEAD_S,
                         "steps": steps})
    return record(NAME, rows)
