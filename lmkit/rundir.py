"""A run folder: where one run writes, and the lock that makes one process its writer.

Every run lives in its own folder under a root (``runs/`` by default, ``LMKIT_RUNS_DIR`` to move it)::

    runs/20261123-181500-default/
        config.json      model, training and data settings
        metrics.jsonl    one JSON object per logged step / evaluation
        checkpoints/     step_000250/, step_000500/, ... (see lmkit.checkpoint)
        samples.txt      text sampled at the end, when the run wrote any
        status.json      a sweep's run: its parameters, status and error

The training layer: the trainer creates and locks run folders through this module; the registry of
runs (``lmkit.runs``) and the notebook pipelines (``lmkit.pipeline``) read and fill them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import time
from pathlib import Path

import pandas as pd

from .files import read_json, read_json_object, write_json_atomic

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
    current = path / "config.json"
    merged = read_json(current, "run config", missing={})
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


STATUS_FILE = "status.json"  # a sweep's run: {"status", "params", "seconds", "error"}


def read_config(run) -> dict:
    """A run folder's ``config.json`` as a dict; ``{}`` when it is missing or unreadable."""
    return read_json_object(Path(run) / "config.json")


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


def flatten_config(d: dict, prefix: str = "") -> dict:
    """A nested config as one level: ``{"model": {"n_layer": 4}}`` → ``{"model.n_layer": 4}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def val_losses(metrics: pd.DataFrame) -> dict:
    """``final_val_loss`` and ``best_val_loss`` of a metrics table; empty when it has no validation rows."""
    if "val_loss" not in metrics or not metrics["val_loss"].notna().any():
        return {}
    val = metrics["val_loss"].dropna()
    return {"final_val_loss": val.iloc[-1], "best_val_loss": val.min()}
