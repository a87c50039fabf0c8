"""Run folders and the run registry.

Every run lives in its own folder under a root (``runs/`` by default)::

    runs/20261123-181500-default/
        config.json      model, training and data settings
        metrics.jsonl    one JSON object per logged step / evaluation
        checkpoints/     step_000250/, step_000500/, ... (see lmkit.checkpoint)
        samples.txt      text sampled at the end, when the run wrote any

A sweep (``sweep(notebook, grid)``) is a container folder of such runs, each with a ``status.json``,
plus ``results.csv``; a pipeline (``run_pipeline``) is a container of executed notebooks; a
fine-tuning run of ``04_finetuning`` (kind ``finetune``) holds one run per method.
``load_runs(root)`` gathers every run below ``root``, containers skipped, into one pandas table.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from .execution import CellProgress, execute

REPO_ROOT = Path(__file__).resolve().parent.parent
# default root: <repository>/runs; LMKIT_RUNS_DIR moves it (make test points it at a temporary folder)
RUNS_DIR = Path(os.environ.get("LMKIT_RUNS_DIR", REPO_ROOT / "runs"))


def new_run(root="runs", name: str | None = None, config: dict | None = None) -> Path:
    """Create a fresh run folder ``root/<YYYYmmdd-HHMMSS>[-name]`` and write ``config.json``.

    The folder is created with an exclusive ``mkdir``: when two runs start in the same second, one
    gets the name and the other a ``-1``, ``-2``, ... suffix, so no run ever writes into another's.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = time.strftime("%Y%m%d-%H%M%S")
    if name:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        if not slug:
            raise ValueError(f"run name {name!r} has no usable characters; use letters, digits, '-', '_' or '.'")
        base = f"{base}-{slug}"
    for i in range(10_000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RuntimeError(f"could not find a free run folder name for {base!r} under {root}")
    (path / "checkpoints").mkdir()
    (path / "config.json").write_text(json.dumps(config or {}, indent=1, sort_keys=True), encoding="utf-8")
    return path


def open_run(run_dir=None, root="runs", name: str | None = None, config: dict | None = None) -> Path:
    """The run folder a notebook writes into.

    ``run_dir`` None: a new folder under ``root`` (``new_run``). Given: that folder, which must exist
    (``python -m lmkit sweep`` creates one per run and passes it in); ``config`` is merged into its
    ``config.json``, so what the sweep recorded there (its parameters) stays.
    """
    if run_dir is None:
        return new_run(root, name, config)
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r} is not a folder; pass None for a new run under {root}")
    from .files import write_json_atomic

    current = path / "config.json"
    merged = json.loads(current.read_text(encoding="utf-8")) if current.is_file() else {}
    merged.update(config or {})
    write_json_atomic(current, merged)
    (path / "checkpoints").mkdir(exist_ok=True)
    return path


class RunInUseError(RuntimeError):
    """Another live process is writing into this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


LOCK_CLAIM_SECONDS = 10.0  # a lock without a pid younger than this is being written, not abandoned


def lock_run(run_dir) -> Path:
    """Claim ``run_dir`` for this process: ``run_dir/.lock`` is created exclusively and holds our pid.

    A second process fails fast with RunInUseError (and touches nothing), also in the instant between
    the first one's create and its writing the pid (an empty lock younger than ``LOCK_CLAIM_SECONDS``).
    A lock left by a dead process (``kill -9``, a crash; an empty one once older) is taken over; one
    left by this same process (a notebook kernel resuming its own run) is kept. The lock goes away when
    the process exits.
    """
    path = Path(run_dir) / ".lock"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(path.read_text().strip() or 0)
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:  # its owner just released it: try again
                continue
            except (OSError, ValueError):
                owner, age = 0, LOCK_CLAIM_SECONDS
            if owner == os.getpid():
                return path
            if owner and _alive(owner):
                raise RunInUseError(f"{run_dir} is in use by process {owner} (lock {path}); wait for it to "
                                    f"finish, or train into a fresh run folder (lmkit.runs.new_run). If no lmkit "
                                    f"run is using it (process {owner} may be another program that got the pid of "
                                    f"one that crashed), delete {path}") from None
            if not owner and age < LOCK_CLAIM_SECONDS:  # created an instant ago, its pid not written yet
                raise RunInUseError(f"{run_dir} is being claimed by another process right now (lock {path}); "
                                    f"wait for it to finish, or train into a fresh run folder") from None
            path.unlink(missing_ok=True)  # stale: its owner is gone; retry the exclusive create
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(_unlock, path, os.getpid())
        return path
    raise RunInUseError(f"could not lock {run_dir}: another process keeps claiming it")


def _unlock(path: Path, pid: int) -> None:
    try:
        if int(path.read_text().strip()) == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def newest_checkpoint(root=RUNS_DIR) -> Path | None:
    """The newest intact checkpoint of the newest pretraining run directly under ``root``, or None.

    Runs whose config.json sets a ``kind`` (fine-tuning runs, sweeps, pipelines) are passed over:
    what the attention and fine-tuning notebooks want is a pretrained language model.
    """
    from .checkpoint import latest_valid

    for run in sorted((p for p in Path(root).glob("*") if (p / "checkpoints").is_dir()), reverse=True):
        if read_config(run).get("kind", "pretrain") != "pretrain":
            continue
        found = latest_valid(run)
        if found is not None:
            return found
    return None


def pretraining_runs(root=RUNS_DIR, names=None, limit: int | None = None) -> list[Path]:
    """Pretraining run folders below ``root`` (sweep runs included) that hold an intact checkpoint,
    newest first by folder name. ``names``: only these runs (folder names or paths relative to
    ``root``), in that order; a name that is not such a run is a ValueError listing what there is.
    ``limit``: at most this many (the newest)."""
    from .checkpoint import latest_valid

    root = Path(root)
    found = [run for run in (_run_folders(root) if root.is_dir() else [])
             if read_config(run).get("kind", "pretrain") == "pretrain" and latest_valid(run) is not None]
    found.sort(key=lambda run: run.name, reverse=True)
    if names:
        by_name = {**{run.name: run for run in found}, **{run.relative_to(root).as_posix(): run for run in found}}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"runs {missing} are not pretraining runs with a checkpoint under {root}; there are "
                             f"{[run.relative_to(root).as_posix() for run in found][:20]}")
        found = [by_name[n] for n in names]
    return found[:limit] if limit is not None else found


def load_metrics(run) -> pd.DataFrame:
    """The metric rows of a run as a DataFrame (empty when it logged nothing yet)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash mid-write
    return pd.DataFrame(rows)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


CONTAINER_KINDS = ("sweep", "pipeline", "finetune")  # config.json "kind" of folders that hold runs, not one run
STATUS_FILE = "status.json"  # a sweep's run: {"status", "params", "seconds", "error"}


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_config(run) -> dict:
    """A run folder's ``config.json`` as a dict; ``{}`` when it is missing or unreadable."""
    return _read_json(Path(run) / "config.json")


def latest_run(root=RUNS_DIR, kind: str = "pretrain", with_file: str | None = None) -> Path | None:
    """The newest folder directly under ``root`` whose ``config.json`` names ``kind`` (e.g. ``"finetune"``,
    ``"evaluation"``) and, when ``with_file`` is given, that holds that file (a finished run: 04's
    ``classification.csv``); None when there is none."""
    root = Path(root)
    found = [p for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and read_config(p).get("kind") == kind
             and (with_file is None or (p / with_file).is_file())]
    return max(found, key=lambda p: p.name, default=None)


def _run_folders(folder: Path):
    """Run folders below ``folder``, sorted: a folder with a config.json is a run (its checkpoints are
    not searched) unless its ``kind`` marks a container (sweep, pipeline, finetune), whose children are."""
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                        and not p.name.startswith(".")):
        if (child / "config.json").is_file() and read_config(child).get("kind") not in CONTAINER_KINDS:
            yield child
        else:
            yield from _run_folders(child)


def load_runs(root="runs") -> pd.DataFrame:
    """One row per run folder below ``root``, however deep (``runs/<sweep>/<run>``; sweep, pipeline and
    finetune folders themselves are skipped): ``run`` (the path under ``root``), ``path``, config columns
    (``model.n_layer``, ``train.learning_rate``, ...), ``status``/``error`` of sweep runs, and summary
    metrics (steps, final train loss, final and best validation loss)."""
    rows = []
    root = Path(root)
    for run in _run_folders(root) if root.is_dir() else []:
        row = {"run": run.relative_to(root).as_posix(), "path": str(run), **_flatten(read_config(run))}
        if (run / STATUS_FILE).is_file():
            status = _read_json(run / STATUS_FILE)
            row["status"], row["error"] = status.get("status"), status.get("error")
        m = load_metrics(run)
        if not m.empty:
            row["steps"] = int(m["step"].max())
            if "train_loss" in m:
                row["final_train_loss"] = m["train_loss"].dropna().iloc[-1] if m["train_loss"].notna().any() else None
            row.update(_val_losses(m))
        rows.append(row)
    return pd.DataFrame(rows)


def _val_losses(metrics: pd.DataFrame) -> dict:
    """``final_val_loss`` and ``best_val_loss`` of a metrics table; empty when it has no validation rows."""
    if "val_loss" not in metrics or not metrics["val_loss"].notna().any():
        return {}
    val = metrics["val_loss"].dropna()
    return {"final_val_loss": val.iloc[-1], "best_val_loss": val.min()}


# ------------------------------------------------------------------------------- notebook pipeline

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
    from .params import convert

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

    from .notebook import SUMMARY_TAG

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
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
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

    from .files import write_json_atomic
    from .notebook_html import export_html

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
    return {k: status[k] for k in ("status", "error", "seconds")}, {**found, **_val_losses(load_metrics(run))}


def _write_results(folder: Path, rows: list[dict]) -> pd.DataFrame:
    from .files import write_bytes_atomic

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
