"""Parameter sweeps: one notebook over a grid of parameters, one run folder per combination, on this
machine or a Dask cluster, resumable.

``sweep(notebook, grid)`` checks every name and value against the notebook's ``parameters`` cell,
creates the sweep folder and a run folder per combination, then submits each combination to an
executor (``lmkit.executors``: a local pool by default, or a Dask client's executor) and collects them
as they finish. ``results.csv`` is rewritten atomically after each one, so a client that crashes or
is interrupted loses nothing that finished; ``resume_sweep(folder)`` (``lmkit sweep --resume``) runs
again only what did not finish, with the grid recorded in the folder.

Each combination runs in ``run_combination`` — on whichever worker gets it — which marks its folder
``running`` in ``status.json`` and ``ok`` or ``failed`` only at the end: a worker that dies (kill -9)
leaves ``running``, which nothing reads as finished, and the client then records it as failed. A
retried attempt starts in a clean folder; the earlier attempt's files move to ``.attempts/<n>/``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .execution import execute
from .executors import (
    check_gpus_per_run,
    check_gpus_per_run_value,
    local_executor,
    run_environment,
    runs_at_once,
)
from .files import read_json, read_json_object, write_bytes_atomic, write_json_atomic
from .params import is_int
from .pipeline import check_parameters, notebook_parameters, read_summary
from .rundir import RUNS_DIR, STATUS_FILE, load_metrics, new_run, val_losses

__all__ = ["SWEEP_KIND", "expand_grid", "resume_sweep", "run_combination", "sweep"]

log_ = logging.getLogger(__name__)
SWEEP_KIND = "sweep"  # config.json "kind" of a sweep folder
ATTEMPTS = ".attempts"  # inside a run folder: the files of earlier attempts, one numbered folder each


def expand_grid(grid) -> list[dict]:
    """The runs of a sweep grid, in order: ``{name: [values]}`` is the Cartesian product (the last
    name varies fastest), a list of dicts is taken as the explicit runs."""
    if isinstance(grid, dict):
        if not grid:
            raise ValueError("the grid is empty; give each swept parameter a list of values, e.g. {'n_layer': [2, 4]}")
        for name, values in grid.items():
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"grid[{name!r}]={values!r} is not a list of values; write [{values!r}], "
                                 f"or pass a single value in fixed=")
            if not values:
                raise ValueError(f"grid[{name!r}] is an empty list; give it at least one value")
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if isinstance(grid, (list, tuple)):
        if not grid:
            raise ValueError("the grid is an empty list; give at least one run, e.g. [{'n_layer': 2}]")
        for run in grid:
            if not isinstance(run, dict):
                raise ValueError(f"grid entry {run!r} is not a dict; a list grid holds one dict of parameters per run")
        return [dict(run) for run in grid]
    raise ValueError(f"grid must be a dict of name → list of values or a list of dicts, not {type(grid).__name__}")


def _slug(params: dict, limit: int = 80) -> str:
    """``n_layer=2,learning_rate=0.001``: a short, readable run name (new_run makes it a folder name)."""
    shown = ",".join(f"{k}={format(v, 'g') if isinstance(v, float) else v}" for k, v in params.items())
    return shown[:limit] or "defaults"


def _check_run_options(parallel, retries, gpus_per_run, executor) -> None:
    if parallel is not None and not is_int(parallel, 1):
        raise ValueError(f"parallel={parallel!r} must be a whole number >= 1 (how many notebooks run at once)")
    if not is_int(retries, 0):
        raise ValueError(f"retries={retries!r} must be a whole number >= 0 (extra attempts of a failed combination)")
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor={executor!r} is not a concurrent.futures.Executor (e.g. "
                         f"dask.distributed.Client(address).get_executor())")
    if executor is None:
        check_gpus_per_run(gpus_per_run)
    else:
        check_gpus_per_run_value(gpus_per_run)  # a Dask cluster's devices are checked on its workers (cli)


def _plan(notebook: Path, grid, fixed: dict) -> tuple[list[dict], list[str], dict, object, bool]:
    """Every combination's parameters, checked and converted: ``(plan, swept, fixed, recorded grid,
    takes_run_dir)``; ValueError before anything is written."""
    combos = expand_grid(grid)
    swept = list(dict.fromkeys(k for combo in combos for k in combo))
    both = sorted(set(swept) & set(fixed))
    if both:
        raise ValueError(f"{both} both swept and fixed; give each parameter in the grid or in fixed, not both")
    if "run_dir" in swept or "run_dir" in fixed:
        raise ValueError("run_dir is set by the sweep (one folder per run); leave it out of grid and fixed")
    declared = notebook_parameters(notebook)  # read once: every check below reuses it
    plan = [check_parameters(notebook, {**fixed, **combo}, declared) for combo in combos]
    fixed = check_parameters(notebook, fixed, declared)
    try:
        json.dumps(plan)
    except TypeError as e:
        raise ValueError(f"sweep parameters must be JSON values (numbers, strings, lists, ...): {e}") from None
    recorded = ({k: [check_parameters(notebook, {k: v}, declared)[k] for v in values] for k, values in grid.items()}
                if isinstance(grid, dict) else [{k: p[k] for k in combo} for combo, p in zip(combos, plan, strict=True)])
    return plan, swept, fixed, recorded, "run_dir" in declared


def sweep(notebook, grid, *, fixed: dict | None = None, parallel: int | None = None, executor: Executor | None = None,
          gpus_per_run: int | None = None, retries: int = 0, runs_root=RUNS_DIR, name: str | None = None,
          log: Callable[[str], object] | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Execute ``notebook`` with papermill once per combination of ``grid``, each into its own run folder.

    ``grid`` is ``{name: [values]}`` (every combination, in order) or a list of dicts (explicit runs);
    ``fixed`` holds parameters shared by every run. Every name is checked against the notebook's
    parameters cell and every value converted to its declared type (``"2"`` → ``2``) before anything
    runs; a bad one raises ValueError. Layout::

        runs_root/<time>-sweep-<stem>/           config.json ({"kind": "sweep", grid, fixed}), results.csv
            <time>-n_layer-2-lr-0.001/           status.json, <notebook>.ipynb, .html and .log, and what the
                                                 notebook writes (it gets ``run_dir`` when it declares it)

    Where the runs execute: ``executor`` None is a local pool of ``parallel`` runs at once (default 1;
    with ``gpus_per_run`` at most devices // gpus_per_run, and that many by default); any
    ``concurrent.futures.Executor`` works, e.g. ``dask.distributed.Client(address).get_executor()`` —
    then every worker must see ``runs_root`` at the same path. Each run gets its own GPU(s)
    (``CUDA_VISIBLE_DEVICES``) with ``gpus_per_run``, else ``cores // runs at once`` CPU threads.

    A failing run is recorded (status ``failed`` with its error) and the sweep goes on; ``retries``
    extra attempts are made of a failed combination first. Returns one row per run in grid order:
    ``run``, ``path``, ``status``, ``error``, ``seconds``, ``attempts``, the swept parameters, the
    notebook's ``summary`` numbers and ``best_val_loss``/``final_val_loss`` from its metrics;
    ``results.csv`` holds the same table, rewritten after every finished run (``pending`` rows have not
    finished: ``resume_sweep`` runs them). ``table.attrs["folder"]`` is the sweep folder.
    """
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise ValueError(f"notebook {notebook} does not exist")
    _check_run_options(parallel, retries, gpus_per_run, executor)
    plan, swept, fixed, recorded, takes_run_dir = _plan(notebook, grid, dict(fixed or {}))
    folder = new_run(Path(runs_root).resolve(), name or f"sweep-{notebook.stem}",
                     {"kind": SWEEP_KIND, "notebook": str(notebook), "grid": recorded, "fixed": fixed})
    rows = []
    for params in plan:
        run = new_run(folder, _slug({k: params[k] for k in swept if k in params}), {"sweep_params": params})
        rows.append({"run": run.name, "path": str(run), "status": "pending", "error": None, "seconds": None,
                     "attempts": 0, **{k: params.get(k) for k in swept}})
    return _run_all(folder, notebook, rows, plan, list(range(len(rows))), takes_run_dir, parallel=parallel,
                    executor=executor, gpus_per_run=gpus_per_run, retries=retries, log=log, progress=progress)


def resume_sweep(folder, *, grid=None, fixed: dict | None = None, parallel: int | None = None,
                 executor: Executor | None = None, gpus_per_run: int | None = None, retries: int = 0,
                 log: Callable[[str], object] | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Run again the combinations of the sweep in ``folder`` that did not finish (failed, interrupted,
    never started), each in its own run folder (an earlier attempt's files move to ``.attempts/``);
    finished ones are kept as they are. The notebook, grid and fixed parameters are those recorded in
    the folder; a ``grid`` or ``fixed`` given here must equal them (ValueError naming both otherwise).
    Where and how the runs execute: as ``sweep``. Returns the whole sweep's table."""
    folder = Path(folder).resolve()
    config = read_json(folder / "config.json", "sweep config", missing=None) if folder.is_dir() else None
    if not isinstance(config, dict) or config.get("kind") != SWEEP_KIND:
        raise ValueError(f"{folder} is not a sweep folder (no config.json with kind 'sweep'); give the folder "
                         f"that `lmkit sweep` printed, e.g. runs/<time>-sweep-<notebook>")
    _check_run_options(parallel, retries, gpus_per_run, executor)
    notebook = Path(config["notebook"])
    if not notebook.is_file():
        raise ValueError(f"the sweep's notebook {notebook} no longer exists; put it back to resume {folder.name}")
    plan, swept, _, _, takes_run_dir = _plan(notebook, config["grid"], dict(config.get("fixed") or {}))
    for given, kept, what in ((grid, config["grid"], "grid"), (fixed, config.get("fixed") or {}, "fixed parameters")):
        if given is not None:
            given_recorded = _plan(notebook, given, {})[3] if what == "grid" else check_parameters(notebook, given)
            if given_recorded != kept:
                raise ValueError(f"the {what} given, {given_recorded}, differ from those of the sweep in {folder}, "
                                 f"{kept}; resume without them (the recorded ones are used) or start a new sweep")
    done = _recorded_rows(folder)
    rows, todo = [], []
    for i, params in enumerate(plan):
        row = done[i] if i < len(done) else None
        if row is None or not Path(row["path"]).is_dir():
            run = new_run(folder, _slug({k: params[k] for k in swept if k in params}), {"sweep_params": params})
            row = {"run": run.name, "path": str(run), "attempts": 0, **{k: params.get(k) for k in swept}}
        status = read_json_object(Path(row["path"]) / STATUS_FILE)
        if status.get("status") != "ok":
            row.update(status="pending", error=None, seconds=None)
            todo.append(i)
        elif row.get("status") != "ok":  # it finished after the client that started it had stopped
            row.update(status="ok", error=None, seconds=status.get("seconds"), attempts=status.get("attempt"))
            row.update(_numbers(_numbers_of(Path(row["path"]), notebook.name), params))
        rows.append(row)
    return _run_all(folder, notebook, rows, plan, todo, takes_run_dir, parallel=parallel, executor=executor,
                    gpus_per_run=gpus_per_run, retries=retries, log=log, progress=progress)


def _recorded_rows(folder: Path) -> list[dict]:
    path = folder / "results.csv"
    if not path.is_file():
        return []
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); it is rewritten whole after each run, so this is not "
                         f"lmkit's file: restore it or start a new sweep") from None
    return table.astype(object).where(table.notna(), None).to_dict("records")


def _run_all(folder: Path, notebook: Path, rows: list[dict], plan: list[dict], todo: list[int], takes_run_dir: bool,
             *, parallel, executor, gpus_per_run, retries, log, progress) -> pd.DataFrame:
    """Submit the combinations ``todo`` (indices into ``rows``/``plan``) and collect them as they finish."""
    log = _serialised(log or log_.info)
    _write_results(folder, rows)
    local = executor is None
    at_once = runs_at_once(parallel, gpus_per_run) if local else None
    where = f"up to {at_once} at once" if local else f"on {_describe(executor)}"
    log(f"sweep {folder}: {len(todo)} run(s) of {notebook.name}, {where}")
    pool = local_executor(at_once) if local else executor
    token = uuid.uuid4().hex  # this submission: an attempt of it that died is told apart from older ones
    bar = tqdm(total=len(todo), desc=f"sweep {folder.name}", unit="run", disable=progress is False, leave=True)
    cwd = os.getcwd()  # restored afterwards, whatever a run did (a chdir is process-wide: threads share it)
    try:
        futures = {}
        for i in todo:
            spec = {"notebook": str(notebook), "run": rows[i]["path"], "params": plan[i],
                    "takes_run_dir": takes_run_dir, "gpus_per_run": gpus_per_run, "concurrent": at_once,
                    "retries": retries, "token": token}
            futures[pool.submit(run_combination, spec)] = i
        pending = set(futures)
        while pending:
            try:
                for future in as_completed(pending, timeout=2.0):
                    pending.discard(future)
                    i = futures[future]
                    row, result = rows[i], _result_of(future, Path(rows[i]["path"]))
                    row.update(result["status"])
                    row.update(_numbers(result["numbers"], plan[i]))
                    _write_results(folder, rows)
                    bar.update(1)
                    log(f"sweep run {row['run']}: {row['status']} in {row['seconds'] or 0:.1f} s"
                        + (f" ({row['error']})" if row["error"] else ""))
            except FuturesTimeout:
                pass  # nothing finished in the last 2 s: refresh the counts below
            bar.set_postfix_str(_counts(rows, todo), refresh=True)
    finally:
        if local:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        os.chdir(cwd)
    table = _write_results(folder, rows)
    table.attrs["swept"] = list(dict.fromkeys(k for params in plan for k in params if k in rows[0]))
    failed = sum(row["status"] != "ok" for row in rows)
    log(f"sweep {folder.name}: {len(rows) - failed} ok, {failed} failed; results in {folder / 'results.csv'}")
    return table


_OWN_COLUMNS = ("run", "path", "status", "error", "seconds", "attempts")


def _numbers(numbers: dict, params: dict) -> dict:
    """A run's numbers for its row: a summary's ``run`` (or a name of the sweep's own) never wins."""
    return {k: v for k, v in numbers.items() if k not in _OWN_COLUMNS and k not in params}


def _describe(executor: Executor) -> str:
    client = getattr(executor, "_client", None)  # a dask.distributed ClientExecutor
    return f"the Dask scheduler at {client.scheduler.address}" if client is not None else type(executor).__name__


def _counts(rows: list[dict], todo: list[int]) -> str:
    """``ok 2 · failed 1 · running 1``: the finished rows, and the run folders that say running."""
    ok = sum(rows[i]["status"] == "ok" for i in todo)
    failed = sum(rows[i]["status"] == "failed" for i in todo)
    running = sum(rows[i]["status"] == "pending"
                  and read_json_object(Path(rows[i]["path"]) / STATUS_FILE).get("status") == "running" for i in todo)
    return f"ok {ok} · failed {failed} · running {running}"


def _result_of(future, run: Path) -> dict:
    """A finished future's result; a task that raised, or whose worker was lost, is a failed run, said
    so in its status.json too (the worker could not)."""
    try:
        return future.result()
    except Exception as e:  # KilledWorker, a lost connection, a crash outside the notebook
        status = read_json_object(run / STATUS_FILE)
        error = f"the run's worker failed or was lost: {type(e).__name__}: {e}"
        status.update(status="failed", error=error)
        write_json_atomic(run / STATUS_FILE, status)
        return {"status": {"status": "failed", "error": error, "seconds": status.get("seconds"),
                           "attempts": status.get("attempt", 1)}, "numbers": {}}


def _serialised(log: Callable[[str], object]) -> Callable[[str], None]:
    """``log`` made safe to call from several threads (``print`` would interleave its lines)."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    return say


def run_combination(spec: dict) -> dict:
    """Execute one combination of a sweep, on whichever machine runs this (a pool thread or a Dask
    worker: a plain function of plain data, so it travels by name): ``{"status": {status, error,
    seconds, attempts}, "numbers": {summary and validation numbers}}``. A failing notebook does not
    raise; up to ``spec["retries"]`` more attempts are made, each in a clean folder. An attempt of
    the same submission found ``running`` died with its worker (Dask then hands the task to another
    one) and counts as failed."""
    run = Path(spec["run"])
    previous = read_json_object(run / STATUS_FILE)
    same_submission = previous.get("token") == spec["token"]
    if same_submission and previous.get("status") == "ok":  # Dask recomputes a result its worker lost
        return {"status": {k: previous.get(k) for k in ("status", "error", "seconds")} | {"attempts": previous["attempt"]},
                "numbers": _numbers_of(run, Path(spec["notebook"]).name)}
    attempt = previous.get("attempt", 0) if same_submission else 0
    status: dict = {}
    while attempt <= spec["retries"]:
        attempt += 1
        _set_aside(run)
        status, numbers = _attempt(spec, run, attempt)
        if status["status"] == "ok":
            return {"status": status, "numbers": numbers}
    if not status:  # every attempt allowed died with its worker
        error = f"its worker died during attempt {attempt} (kill -9, out of memory, a lost machine)"
        status = {**previous, "status": "failed", "error": error, "attempt": attempt}
        write_json_atomic(run / STATUS_FILE, status)
        return {"status": {"status": "failed", "error": error, "seconds": previous.get("seconds"),
                           "attempts": attempt}, "numbers": {}}
    return {"status": status, "numbers": numbers}


def _set_aside(run: Path) -> None:
    """Move an earlier attempt's files (all but config.json) into ``.attempts/<n>/``: a retry starts clean."""
    earlier = [p for p in run.iterdir() if p.name not in ("config.json", ATTEMPTS, "checkpoints")]
    earlier += [run / "checkpoints"] if any((run / "checkpoints").iterdir()) else []
    if not earlier:
        return
    before = len(list((run / ATTEMPTS).iterdir())) if (run / ATTEMPTS).is_dir() else 0
    kept = run / ATTEMPTS / str(before + 1)
    kept.mkdir(parents=True)
    for path in earlier:
        os.replace(path, kept / path.name)
    (run / "checkpoints").mkdir(exist_ok=True)


def _attempt(spec: dict, run: Path, attempt: int) -> tuple[dict, dict]:
    """One attempt: status.json says ``running`` until the notebook has finished, then ``ok``/``failed``."""
    from papermill.exceptions import PapermillExecutionError

    from .notebook_html import export_html  # nbconvert: seconds to import, only when pages are written

    notebook = Path(spec["notebook"])
    target = run / notebook.name
    params = {**spec["params"], **({"run_dir": str(run)} if spec["takes_run_dir"] else {})}
    with run_environment(spec["gpus_per_run"], spec["concurrent"]) as env:
        status = {"status": "running", "params": spec["params"], "seconds": 0.0, "error": None, "attempt": attempt,
                  "token": spec["token"], "host": socket.gethostname(), "pid": os.getpid(), "env": env}
        write_json_atomic(run / STATUS_FILE, status)
        started = time.time()
        try:
            execute(notebook, target, params, cwd=notebook.parent, env=env)  # the kernel's cwd, whatever ours is
        except PapermillExecutionError as e:
            status.update(status="failed", error=f"{e.ename}: {e.evalue} (cell {e.cell_index})")
        except Exception as e:  # a kernel that died or never started: recorded, the sweep goes on
            status.update(status="failed", error=f"{type(e).__name__}: {e}")
        else:
            status["status"] = "ok"
    status["seconds"] = round(time.time() - started, 2)
    if target.is_file():
        try:
            export_html(target)
        except Exception as e:  # an unwritable page must not cost the sweep its other runs
            log_.warning("sweep run %s: could not export %s: %s: %s", run.name, target.name, type(e).__name__, e)
    numbers = _numbers_of(run, notebook.name)
    write_json_atomic(run / STATUS_FILE, status)  # last: a folder reads as finished only when it is
    return {k: status[k] for k in ("status", "error", "seconds")} | {"attempts": attempt}, numbers


def _numbers_of(run: Path, notebook_name: str) -> dict:
    """A run's numbers: its executed notebook's summary ({} when missing or unreadable) and its
    validation losses."""
    target, found = run / notebook_name, {}
    try:
        found = read_summary(target) if target.is_file() else {}
    except Exception as e:  # an unreadable notebook must not cost the sweep its other runs
        log_.warning("sweep: could not read the summary of %s: %s: %s", target, type(e).__name__, e)
    return {**found, **val_losses(load_metrics(run))}


def _write_results(folder: Path, rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    write_bytes_atomic(folder / "results.csv", table.to_csv(index=False).encode("utf-8"))
    table.attrs["folder"] = str(folder)
    return table
