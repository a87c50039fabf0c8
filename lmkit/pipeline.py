"""Notebooks in batch through papermill: ``run_pipeline`` executes the numbered notebooks in order
into one container folder (each as ``.ipynb``, ``.html`` and ``.log``, a progress line per notebook),
``sweep`` runs one notebook over a grid of parameters, one run folder per combination, and collects
their numbers into ``results.csv``. Parameters are checked against each notebook's ``parameters``
cell before anything runs.

The orchestration layer: above everything a notebook imports; it reads and writes run folders through
``lmkit.rundir``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from .execution import CellProgress, execute
from .files import write_bytes_atomic, write_json_atomic
from .notebook import SUMMARY_TAG
from .params import convert, is_int
from .rundir import REPO_ROOT, RUNS_DIR, STATUS_FILE, load_metrics, new_run, val_losses

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names the notebook, the cell and the error."""


def numbered_notebooks(folder=NOTEBOOK_DIR) -> list[Path]:
    """``01_data.ipynb``, ``02_...`` in order: the lessons the pipeline runs."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(notebook) -> dict[str, dict]:
    """The ``parameters`` cell of a notebook: name → {inferred_type_name, default, help} (papermill)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_parameters(notebook, params: dict, declared: dict | None = None) -> dict:
    """``params`` converted to the types the notebook's parameters cell declares.

    Raises ValueError before anything runs when a name is not declared there (listing the declared
    names) or a value does not fit the declared type. ``declared``: the notebook's
    ``notebook_parameters``, when the caller has already read them (reading runs papermill's parser).
    """
    declared = notebook_parameters(notebook) if declared is None else declared
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{Path(notebook).name}: unknown parameter(s) {unknown}; its parameters cell declares "
                         f"{sorted(declared)}")
    return {k: convert(k, v, declared[k]["inferred_type_name"]) for k, v in params.items()}


def load_profile(path) -> dict[str, dict]:
    """A parameters file: ``{notebook stem: {name: value}}``, plus an optional ``all:`` section that
    applies to every notebook declaring those names. Empty when ``path`` is None."""
    import yaml

    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"parameters file {path} does not exist (profiles live in notebooks/params/)")
    try:
        profile = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"parameters file {path} is not valid YAML: {e}") from None
    if not isinstance(profile, dict) or not all(isinstance(v, dict) for v in profile.values()):
        raise ValueError(f"parameters file {path} must map notebook names (e.g. 01_data) or 'all' to "
                         f"mappings of parameter names to values")
    return profile


def _params_for(notebook: Path, profile: dict) -> dict:
    declared = notebook_parameters(notebook)
    shared = {k: v for k, v in profile.get("all", {}).items() if k in declared}
    return {**shared, **profile.get(notebook.stem, {})}


def read_summary(notebook: Path) -> dict:
    """Headline numbers from the output of the cell tagged ``summary`` (see lmkit.notebook.summary)."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        if SUMMARY_TAG in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                if "application/json" in output.get("data", {}):
                    return dict(output["data"]["application/json"])
    return {}


def headline(numbers: dict, width: int | None = None, indent: int = 0) -> str:
    """A notebook's summary numbers as one line, ``documents 77, kept 42, val_loss 1.647``; with a
    ``width``, as lines of at most that many characters, each indented by ``indent`` spaces and broken
    between numbers, never inside one."""
    items = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()]
    if width is None:
        return ", ".join(items)
    lines, line = [], ""
    for item in items:
        if line and indent + len(line) + len(item) + 1 > width:
            lines.append(line)
            line = ""
        line += (" " if line else "") + item + ","
    return "\n".join(" " * indent + text for text in [*lines, line]).rstrip(",")


def run_pipeline(notebooks=None, *, profile=None, runs_root="runs", name="pipeline", log=None,
                 progress: bool | None = None) -> Path:
    """Execute the numbered notebooks in order with papermill into a new run folder.

    Each notebook lands there executed (``.ipynb``), as HTML, and with its log (``.log``: what its
    cells printed, papermill's and the kernel's messages); ``summary.json`` collects their headline
    numbers. All parameters are checked against every notebook before the first one runs. A failing
    notebook raises PipelineError naming the notebook and the cell; the notebooks before it and the
    partly executed one stay in the folder.

    ``progress``: a bar per notebook over its cells (elapsed time, the cell running), then its
    headline numbers; None: when stdout is a terminal. Without bars, ``log`` gets a line as each
    notebook starts and one as it ends.
    """
    from papermill.exceptions import PapermillExecutionError

    from .notebook_html import export_html  # nbconvert: seconds to import, only for pipelines

    log = log or logging.getLogger(__name__).info
    notebooks = [Path(n) for n in notebooks] if notebooks is not None else numbered_notebooks()
    if not notebooks:
        raise ValueError(f"no numbered notebooks (NN_name.ipynb) found in {NOTEBOOK_DIR}")
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        raise ValueError(f"notebook(s) not found: {missing}")
    prof = load_profile(profile)
    unknown_sections = sorted(set(prof) - {"all"} - {n.stem for n in notebooks})
    if unknown_sections:
        raise ValueError(f"parameters file {profile}: section(s) {unknown_sections} match no notebook; "
                         f"use 'all' or one of {[n.stem for n in notebooks]}")
    plan = [(nb, check_parameters(nb, _params_for(nb, prof))) for nb in notebooks]
    out = new_run(runs_root, name, {"kind": "pipeline", "profile": str(profile) if profile else None,
                                    "notebooks": {nb.stem: params for nb, params in plan}})
    log(f"running {len(plan)} notebook(s) into {out}/ (each as .ipynb, .html and .log)")
    width = max(len(nb.stem) for nb, _ in plan)
    summaries = {}
    for nb, params in plan:
        target = out / nb.name
        started = time.time()
        bar = CellProgress(nb.stem.ljust(width), enabled=progress)
        if not bar.enabled:
            log(f"{nb.stem}: running" + (f" with {params}" if params else ""))
        try:
            execute(nb, target, params, progress=bar)
        except PapermillExecutionError as e:
            bar.close(f"failed in cell {e.exec_count}")
            export_html(target)
            raise PipelineError(f"{nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                f"{e.ename}: {e.evalue}\nthe partly executed notebook is {target}, its output "
                                f"in {target.with_suffix('.log')}") from None
        except BaseException:  # Ctrl-C, a kernel that died: the line says so, the error goes on up
            bar.close("stopped")
            raise
        bar.close("done")
        export_html(target)
        summaries[nb.stem] = {"seconds": round(time.time() - started, 1), **read_summary(target)}
        (out / "summary.json").write_text(json.dumps(summaries, indent=1), encoding="utf-8")
        numbers = headline({k: v for k, v in summaries[nb.stem].items() if k != "seconds"})
        if not bar.enabled:
            log(f"{nb.stem}: done in {summaries[nb.stem]['seconds']:.1f} s" + (f": {numbers}" if numbers else ""))
        elif numbers:  # under the notebook's line, past its name, wrapped to the terminal
            columns = shutil.get_terminal_size(fallback=(100, 24)).columns
            log(headline({k: v for k, v in summaries[nb.stem].items() if k != "seconds"}, columns - 1, width + 2))
    return out


# ---------------------------------------------------------------------------------- parameter sweeps

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


def sweep(notebook, grid, *, fixed: dict | None = None, parallel: int = 1, runs_root=RUNS_DIR,
          name: str | None = None, log: Callable[[str], object] | None = None) -> pd.DataFrame:
    """Execute ``notebook`` with papermill once per combination of ``grid``, each into its own run folder.

    ``grid`` is ``{name: [values]}`` (every combination, in order) or a list of dicts (explicit runs);
    ``fixed`` holds parameters shared by every run. Every name is checked against the notebook's
    parameters cell and every value converted to its declared type (``"2"`` → ``2``) before anything
    runs; a bad one raises ValueError. Layout::

        runs_root/<time>-sweep-<stem>/           config.json ({"kind": "sweep", ...}), results.csv
            <time>-n_layer-2-lr-0.001/           status.json, <notebook>.ipynb and .html, and what the
                                                 notebook writes (it gets ``run_dir`` when it declares it)

    A failing run is recorded (status ``failed`` with its error) and the sweep goes on; up to
    ``parallel`` notebooks run at once. Returns one row per run in grid order: ``run``, ``path``,
    ``status``, ``error``, ``seconds``, the swept parameters, the notebook's ``summary`` numbers and
    ``best_val_loss``/``final_val_loss`` from its metrics; ``results.csv`` holds the same table and is
    rewritten after every finished run (``pending`` rows have not finished). ``table.attrs["folder"]``
    is the sweep folder.
    """
    log = _serialised(log or logging.getLogger(__name__).info)  # runs start in worker threads
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise ValueError(f"notebook {notebook} does not exist")
    if not is_int(parallel, 1):
        raise ValueError(f"parallel={parallel!r} must be a whole number >= 1 (how many notebooks run at once)")
    fixed = dict(fixed or {})
    combos = expand_grid(grid)
    swept = list(dict.fromkeys(k for combo in combos for k in combo))
    both = sorted(set(swept) & set(fixed))
    if both:
        raise ValueError(f"{both} both swept and fixed; give each parameter in the grid or in fixed, not both")
    if "run_dir" in swept or "run_dir" in fixed:
        raise ValueError("run_dir is set by the sweep (one folder per run); leave it out of grid and fixed")
    declared = notebook_parameters(notebook)  # read once: every check below reuses it
    takes_run_dir = "run_dir" in declared
    plan = [check_parameters(notebook, {**fixed, **combo}, declared) for combo in combos]
    fixed = check_parameters(notebook, fixed, declared)
    try:
        json.dumps(plan)
    except TypeError as e:
        raise ValueError(f"sweep parameters must be JSON values (numbers, strings, lists, ...): {e}") from None

    recorded = ({k: [check_parameters(notebook, {k: v}, declared)[k] for v in values] for k, values in grid.items()}
                if isinstance(grid, dict) else [{k: p[k] for k in combo} for combo, p in zip(combos, plan, strict=True)])
    folder = new_run(Path(runs_root).resolve(), name or f"sweep-{notebook.stem}",
                     {"kind": "sweep", "notebook": str(notebook), "grid": recorded, "fixed": fixed})
    rows = []
    for params in plan:
        run = new_run(folder, _slug({k: params[k] for k in swept}), {"sweep_params": params})
        rows.append({"run": run.name, "path": str(run), "status": "pending", "error": None, "seconds": None,
                     **{k: params.get(k) for k in swept}})
    _write_results(folder, rows)
    log(f"sweep {folder}: {len(plan)} run(s) of {notebook.name}, up to {parallel} at once")

    cwd = os.getcwd()  # restored afterwards, whatever a run did (a chdir is process-wide: threads share it)
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lmkit-sweep")
    try:
        futures = {pool.submit(_sweep_one, notebook, Path(row["path"]), params, takes_run_dir, log): row
                   for row, params in zip(rows, plan, strict=True)}
        for future in as_completed(futures):
            row, (status, numbers) = futures[future], future.result()
            row.update(status)
            row.update({k: v for k, v in numbers.items() if k not in row})  # a summary's `run` never wins
            _write_results(folder, rows)
            log(f"sweep run {row['run']}: {row['status']} in {row['seconds']:.1f} s"
                + (f" ({row['error']})" if row["error"] else ""))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.chdir(cwd)
    table = _write_results(folder, rows)
    failed = sum(row["status"] != "ok" for row in rows)
    log(f"sweep {folder.name}: {len(rows) - failed} ok, {failed} failed; results in {folder / 'results.csv'}")
    return table


def _serialised(log: Callable[[str], object]) -> Callable[[str], None]:
    """``log`` made safe to call from several threads (``print`` would interleave its lines)."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    return say


def _sweep_one(notebook: Path, run: Path, params: dict, takes_run_dir: bool, log) -> tuple[dict, dict]:
    """Execute one run of a sweep: ``({status, error, seconds}, {summary and validation numbers})``.
    A failing notebook does not raise; its error is returned."""
    from papermill.exceptions import PapermillExecutionError

    from .notebook_html import export_html  # nbconvert: seconds to import, only when pages are written

    target = run / notebook.name
    status = {"status": "running", "params": params, "seconds": 0.0, "error": None}
    write_json_atomic(run / STATUS_FILE, status)
    log(f"sweep run {run.name}: started")
    started = time.time()
    try:
        execute(notebook, target, {**params, **({"run_dir": str(run)} if takes_run_dir else {})},
                cwd=notebook.parent)  # the kernel's cwd, whatever the process's is
    except PapermillExecutionError as e:
        status.update(status="failed", error=f"{e.ename}: {e.evalue} (cell {e.cell_index})")
    except Exception as e:  # a kernel that died or never started: recorded, the sweep goes on
        status.update(status="failed", error=f"{type(e).__name__}: {e}")
    else:
        status["status"] = "ok"
    status["seconds"] = round(time.time() - started, 2)
    write_json_atomic(run / STATUS_FILE, status)
    found = {}
    if target.is_file():
        try:
            export_html(target)
            found = read_summary(target)
        except Exception as e:  # an unreadable notebook must not cost the sweep its other runs
            log(f"sweep run {run.name}: could not export or read {target.name}: {type(e).__name__}: {e}")
    return {k: status[k] for k in ("status", "error", "seconds")}, {**found, **val_losses(load_metrics(run))}


def _write_results(folder: Path, rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    write_bytes_atomic(folder / "results.csv", table.to_csv(index=False).encode("utf-8"))
    table.attrs["folder"] = str(folder)
    return table


CHECKED_TAG = "nbval-check-output"  # cells whose stored output `make test` compares (nbval)


def store_checked_outputs(executed, target) -> int:
    """Copy into the notebook ``target`` the outputs (and execution counts) of its cells tagged
    ``nbval-check-output`` from an ``executed`` copy, and clear every other output, so the
    repository holds only the outputs nbval compares: no large plots, no machine paths. Returns
    the number of cells kept."""
    import nbformat

    done = nbformat.read(executed, as_version=4)
    nb = nbformat.read(target, as_version=4)
    executed_cells = {c.get("id"): c for c in done.cells}
    kept = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = executed_cells.get(cell.get("id"))
        if CHECKED_TAG in cell.metadata.get("tags", []) and source is not None:
            cell.outputs = source.get("outputs", [])
            cell.execution_count = source.get("execution_count")  # nbval skips cells that never ran
            kept += 1
        else:
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, target)
    return kept
