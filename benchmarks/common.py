"""What every benchmark shares: machine facts, side-by-side timing with medians, and the results files.

Each benchmark prints a table and appends its rows to ``benchmarks/results/<name>.csv`` with the
machine it ran on (CPU model, threads, torch version, device), so results from different machines
and days sit in one file and stay comparable.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# nanoGPT's shakespeare_char text (char-rnn's tiny Shakespeare, 1,115,394 bytes), shipped in the
# repository with its source and checksum (data/README.md)
TINY_SHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def text_file(path) -> Path:
    """``path`` checked for a benchmark: it must exist, and the shipped tiny Shakespeare must be intact
    (a changed file would make its results incomparable with the recorded ones). Exits with a message."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--text {path}: no such file; pass any UTF-8 text file")
    if path.resolve() == TINY_SHAKESPEARE.resolve():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != TINY_SHAKESPEARE_SHA256:
            raise SystemExit(f"{path}: SHA-256 {digest} is not the shipped file's {TINY_SHAKESPEARE_SHA256}; "
                             f"restore it with `git checkout -- data/tinyshakespeare/input.txt`, or pass "
                             f"your own text with --text")
    return path


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict:
    """Where a result was measured: time (UTC), CPU, cores, torch threads, torch version, device."""
    device = torch.device(device)
    info = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(contenders: dict[str, Callable[[], object]], rounds: int = 5, device="cpu") -> dict[str, list[float]]:
    """Seconds per call of each contender, measured in alternating rounds (A B A B ...), so a change in
    machine load hits all of them alike. One untimed call each first (warm-up). Returns name → times."""
    device = torch.device(device)
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def record(name: str, rows: list[dict], device="cpu") -> pd.DataFrame:
    """Print ``rows`` as a table and append them, with ``machine_info``, to ``results/<name>.csv``."""
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\n== {name} ==\n{table.to_string(index=False)}")
    stamped = table.assign(**machine_info(device))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.csv"
    if path.exists() and list(pd.read_csv(path, nrows=0).columns) != list(stamped.columns):
        # the benchmark gained or lost a column: rewrite the file with the union, old rows kept
        merged = pd.concat([pd.read_csv(path), stamped], ignore_index=True)
        tmp = path.with_name(f".{path.name}.tmp")
        merged.to_csv(tmp, index=False)
        tmp.replace(path)
    else:
        stamped.to_csv(path, mode="a", header=not path.exists(), index=False)
    print(f"appended to {path}")
    return table
