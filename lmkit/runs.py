"""Run folders and the run registry.

Every run lives in its own folder under a root (``runs/`` by default)::

    runs/20261123-181500-default/
        config.json      model, training and data settings
        metrics.jsonl    one JSON object per logged step / evaluation
        checkpoints/     step_000250/, step_000500/, ... (see lmkit.checkpoint)
        samples.txt      text sampled at the end, when the run wrote any

``load_runs(root)`` gathers all of them into one pandas table.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd


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


def load_runs(root="runs") -> pd.DataFrame:
    """One row per run folder under ``root``: config columns (``model.n_layer``, ``train.learning_rate``,
    ...) and summary metrics (steps, final train loss, final and best validation loss)."""
    rows = []
    for run in sorted(p for p in Path(root).glob("*") if (p / "config.json").is_file()):
        try:
            config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except ValueError:
            config = {}
        row = {"run": run.name, "path": str(run), **_flatten(config)}
        m = load_metrics(run)
        if not m.empty:
            row["steps"] = int(m["step"].max())
            if "train_loss" in m:
                row["final_train_loss"] = m["train_loss"].dropna().iloc[-1] if m["train_loss"].notna().any() else None
            if "val_loss" in m and m["val_loss"].notna().any():
                val = m["val_loss"].dropna()
                row["final_val_loss"], row["best_val_loss"] = val.iloc[-1], val.min()
        rows.append(row)
    return pd.DataFrame(rows)
