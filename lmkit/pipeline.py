"""Notebooks in batch through papermill: ``run_pipeline`` executes the numbered notebooks in order
into one container folder (each as ``.ipynb``, ``.html`` and ``.log``, a progress line per notebook),
and the parameter checks every batch run makes against a notebook's ``parameters`` cell before
anything runs (sweeps over a grid of parameters build on it: ``lmkit.sweeps``).

The orchestration layer: above everything a notebook imports; it reads and writes run folders through
``lmkit.rundir``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from .execution import CellProgress, execute
from .notebook import SUMMARY_TAG
from .params import convert
from .rundir import REPO_ROOT, new_run

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
