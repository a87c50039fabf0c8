"""Executing one notebook with papermill, quietly: a log file beside it, a progress bar over its cells.

``execute(source, target, parameters)`` runs ``source`` into ``target`` as papermill does, and

- writes what the run says to ``target.with_suffix(".log")``: papermill's messages, a line as each
  code cell starts, what the cells print (stdout and stderr, as it comes) and the kernel process's
  own output — none of it reaches the terminal;
- starts the kernel through a jupyter_client manager that provisions CurveZMQ keys
  (``transport_encryption="auto"``; ipykernel's kernelspec declares support), so the kernel's
  sockets on 127.0.0.1 are encrypted and ipykernel has no cause for its warning that a kernel runs
  "over TCP without encryption";
- starts the kernel in ``cwd`` (the notebook's folder by default) without changing the process's
  working directory (papermill's own ``cwd=`` is a process-wide ``chdir``: a race between the
  threads of a parallel sweep);
- reports each code cell to a ``CellProgress``: the one line per notebook a terminal shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import zmq
from jupyter_client.manager import AsyncKernelManager
from tqdm.auto import tqdm
from traitlets import Dict, Unicode
from traitlets.config import Config

KERNEL = "python3"
BAR_FORMAT = "{desc}  {bar:20}  {n_fmt}/{total_fmt} cells  {elapsed}{postfix}"


class LoggedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel process appends its stdout and stderr to ``output_path``.

    (A kernel restart would launch without it; papermill never restarts a kernel, a dead one fails
    the notebook.)"""

    output_path = Unicode("", config=True, help="file the kernel process's own output is appended to")
    extra_env = Dict(config=True, help="environment variables set for the kernel process only (its devices, "
                                       "its threads)")

    async def start_kernel(self, **kw):
        if self.extra_env:
            kw["env"] = {**kw.get("env", os.environ), **self.extra_env}
        if not self.output_path:
            return await super().start_kernel(**kw)
        with open(self.output_path, "ab") as out:  # the kernel process keeps its own descriptor
            return await super().start_kernel(**{**kw, "stdout": out, "stderr": out})


def kernel_config(output_path: Path | str = "", env: dict | None = None) -> Config:
    """The traitlets config of ``LoggedKernelManager``: encrypted transport where pyzmq has CurveZMQ
    (libsodium), the kernel's own output to ``output_path``, ``env`` added to its environment."""
    return Config({"LoggedKernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled",
                                           "output_path": str(output_path), "extra_env": dict(env or {})}})


class CellProgress:
    """One notebook's line in a terminal: a bar over its code cells, the time since it started and
    the first line of the cell running, redrawn every second so the clock moves in a long cell.

    ``enabled`` None: only where ``file`` is a terminal (a log file or CI output gets no bar; the
    caller prints a line when a notebook starts and ends instead)."""

    def __init__(self, label: str, *, file=None, enabled: bool | None = None, width: int = 70):
        self.label = label
        self.file = file or sys.stdout
        self.enabled = bool(getattr(self.file, "isatty", lambda: False)()) if enabled is None else enabled
        self.width = width  # of the running cell's text
        self.bar = None
        self._stop = threading.Event()

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        # a terminal that reports no size (0 × 0) would make tqdm draw nothing: take 100 × 24 then
        columns, lines = shutil.get_terminal_size(fallback=(100, 24))
        self.bar = tqdm(total=total, desc=self.label, unit="cell", file=self.file, bar_format=BAR_FORMAT,
                        ncols=columns, nrows=lines, leave=True)
        threading.Thread(target=self._tick, name=f"progress-{self.label.strip()}", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if self.bar is not None:
                self.bar.refresh()

    def cell_started(self, number: int, source: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"running cell {number}: {first_line(source, self.width)}")

    def cell_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, outcome: str) -> None:
        """Leave the line on screen with ``outcome`` ("done", "failed in cell 7") in place of the cell."""
        self._stop.set()
        if self.bar is not None:
            self.bar.set_postfix_str(outcome, refresh=False)
            self.bar.close()
            self.bar = None


def first_line(source: str, width: int = 70) -> str:
    """What a cell does, in one line of at most ``width`` characters: its first line that is not blank
    or an import (imports say little about a cell), else its first line."""
    lines = [s.strip() for s in source.splitlines() if s.strip()]
    line = next((s for s in lines if not s.startswith(("import ", "from "))), lines[0] if lines else "")
    return line if len(line) <= width else line[: width - 1] + "…"


def code_cells(notebook) -> int:
    return sum(1 for c in notebook.cells if c.cell_type == "code" and c.source.strip())


@contextmanager
def _papermill_messages(stream):
    """papermill's log records from this thread go to ``stream`` while the block runs (a parallel sweep's
    other threads log into their own files)."""
    logger = logging.getLogger("papermill")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # its INFO lines are what the log file is for; no console shows them
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def execute(source, target, parameters: dict | None = None, *, cwd=None, env: dict | None = None,
            progress: CellProgress | None = None) -> Path:
    """Execute notebook ``source`` into ``target`` with papermill (``parameters`` injected after its
    ``parameters`` cell), the kernel started in ``cwd`` (default: the notebook's folder) with ``env``
    added to its environment (this process's stays as it is). Returns the
    log file, ``target`` with the suffix ``.log``. A failing cell raises papermill's
    ``PapermillExecutionError``; the partly executed notebook is at ``target`` and its output in the
    log."""
    import papermill

    source, target = Path(source), Path(target)
    cwd = Path(cwd) if cwd is not None else source.parent
    log_path = target.with_suffix(".log")
    started = time.time()
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, _papermill_messages(log):
        log.write(f"== {source} → {target}\n== parameters {json.dumps(parameters or {}, default=str)}\n"
                  + (f"== environment {json.dumps(env)}\n" if env else "")
                  + f"== kernel {KERNEL} in {cwd}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        counter = {"n": 0}

        def on_notebook_start(notebook, **_):
            if progress is not None:
                progress.start(code_cells(notebook))

        def on_cell_start(cell, cell_index, **_):
            if cell.cell_type != "code" or not cell.source.strip():
                return
            counter["n"] += 1
            log.write(f"== cell {counter['n']} (index {cell_index}): {first_line(cell.source, 100)}\n")
            if progress is not None:
                progress.cell_started(counter["n"], cell.source)

        def on_cell_executed(**_):
            if progress is not None:
                progress.cell_done()

        try:
            papermill.execute_notebook(
                str(source), str(target), parameters=parameters or {}, kernel_name=KERNEL, progress_bar=False,
                stdout_file=log, stderr_file=log, resources={"metadata": {"path": str(cwd)}},
                kernel_manager_class=LoggedKernelManager, config=kernel_config(log_path, env),
                on_notebook_start=on_notebook_start, on_cell_start=on_cell_start, on_cell_executed=on_cell_executed)
        except BaseException as e:
            log.write(f"== failed after {time.time() - started:.1f} s: {type(e).__name__}: {e}\n")
            raise
        log.write(f"== finished in {time.time() - started:.1f} s\n")
    return log_path
