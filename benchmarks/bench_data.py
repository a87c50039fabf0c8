"""Data preparation: seconds and MB/s to clean, de-duplicate, train BPE and encode the Shakespeare corpus.

What is measured: the pipeline of ``notebooks/01_data.ipynb`` on the full Shakespeare corpus
(``lmkit.data.fetch_shakespeare``, 77 plays and poems, ~9 MB), stage by stage, with the settings
read from the notebook's parameters cell (so the two cannot drift; defaults in brackets):

- ``load``: ``load_documents`` reading the text files;
- ``clean``: ``clean_documents`` (NFC, whitespace, drop documents under ``min_chars`` [1000]);
- ``dedup``: ``find_near_duplicates`` (``shingle_size``-word shingles [4], ``num_perm`` MinHash
  permutations [128], ``dedup_threshold`` [0.1]) and ``apply_dedup_policy(keep=keep)`` ["modern"];
- ``bpe+encode+write``: ``work_groups`` and ``prepare_dataset(tokenizer="bpe", vocab_size=2048)``
  into a temporary folder (split, BPE training on the train split, encoding, writing the files).
  BPE, not the notebook's default char tokenizer: training BPE is the expensive stage.

How: the whole preparation runs in a fresh child process (this module run with a hidden
``--child`` flag), so its peak memory can be read from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(KiB on Linux, bytes on macOS) at the end; the peak right after the imports (Python, torch, lmkit)
is reported too, so the share of the preparation itself is visible. The download is done (once,
cached under ``data/raw``) before timing starts. MB/s = input MB (UTF-8 bytes of the loaded
documents, 1 MB = 10^6 bytes) / total seconds. ``--rounds N`` runs N children and reports the
median seconds and the largest peak.

Targets: total < 30 s; peak memory < 1 GB (1000 MB).
"""

from __future__ import annotations

import argparse
import ast
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lmkit.cleaning import clean_documents
from lmkit.corpus import work_groups
from lmkit.data import fetch_shakespeare, load_documents, prepare_dataset
from lmkit.dedup import apply_dedup_policy, find_near_duplicates
from lmkit.runs import NOTEBOOK_DIR, notebook_parameters

from .common import record

NAME = "data"
TARGET_TOTAL_S = 30.0
TARGET_PEAK_MB = 1000.0
STAGES = ("load", "clean", "dedup", "bpe+encode+write")
QUICK_DOCS = 8  # a smoke check: the first 8 documents (4 works, modern and Folio editions)
REPO_ROOT = Path(__file__).resolve().parents[1]
# the settings of 01_data's parameters cell that the measured stages use
NOTEBOOK_SETTINGS = ("min_chars", "lowercase", "shingle_size", "num_perm", "dedup_threshold", "keep",
                     "val_fraction", "seed")


def notebook_settings(notebook=NOTEBOOK_DIR / "01_data.ipynb") -> dict:
    """The defaults of ``NOTEBOOK_SETTINGS`` in the notebook's parameters cell, as Python values."""
    declared = notebook_parameters(notebook)
    missing = [name for name in NOTEBOOK_SETTINGS if name not in declared]
    if missing:
        raise ValueError(f"{notebook}: its parameters cell no longer declares {missing}; "
                         f"update benchmarks/bench_data.py NOTEBOOK_SETTINGS")
    return {name: ast.literal_eval(declared[name]["default"]) for name in NOTEBOOK_SETTINGS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"only the first {QUICK_DOCS} documents (a smoke check)")
    parser.add_argument("--device", default="cpu", help="recorded with the results; data preparation runs on the CPU")
    parser.add_argument("--rounds", type=int, default=1, help="fresh child processes to run (default: 1)")
    parser.add_argument("--docs", type=int, default=None, help="use only the first N documents (default: all)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default: 2048)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: JSON settings for the child


def main(args: argparse.Namespace) -> pd.DataFrame:
    if args.child is not None:  # we are the child: prepare once and write the measurements
        _child(**json.loads(args.child))
        return pd.DataFrame()
    n_docs = QUICK_DOCS if args.quick else args.docs
    source = fetch_shakespeare()  # download outside the timing (a no-op once cached)
    settings = notebook_settings()
    runs = [_run_child(str(source), n_docs, args.vocab_size, settings) for _ in range(args.rounds)]
    seconds = {stage: statistics.median(r["seconds"][stage] for r in runs) for stage in STAGES}
    total = statistics.median(sum(r["seconds"].values()) for r in runs)
    peak = max(r["peak_mb"] for r in runs)
    first = runs[0]
    rows = [_row(f"{stage} time", seconds[stage], "s") for stage in STAGES]
    rows += [
        _row("total time", total, "s", TARGET_TOTAL_S, total < TARGET_TOTAL_S),
        _row("input", first["input_mb"], "MB"),
        _row("throughput", first["input_mb"] / total, "MB/s"),
        _row("peak memory", peak, "MB", TARGET_PEAK_MB, peak < TARGET_PEAK_MB),
        _row("memory after imports", max(r["baseline_mb"] for r in runs), "MB"),
        _row("documents loaded", first["docs_loaded"], "docs"),
        _row("documents kept", first["docs_kept"], "docs"),
        _row("tokens written", first["tokens"], "tokens"),
    ]
    for row in rows:
        row.update(rounds=args.rounds, vocab_size=args.vocab_size, docs_limit=n_docs)
    return record(NAME, rows, args.device)


def _row(measure: str, value: float, unit: str, target: float | None = None, met: bool | None = None) -> dict:
    return {"measure": measure, "value": value, "unit": unit, "target": target, "met": met}


def _run_child(source: str, n_docs: int | None, vocab_size: int, notebook: dict) -> dict:
    """Run the preparation in a fresh interpreter; return its measurements."""
    with tempfile.TemporaryDirectory(prefix="lmkit-bench-data-") as tmp:
        result = Path(tmp) / "result.json"
        settings = json.dumps({"source": source, "n_docs": n_docs, "vocab_size": vocab_size, "notebook": notebook,
                               "out_dir": str(Path(tmp) / "prepared"), "result": str(result)})
        subprocess.run([sys.executable, "-m", "benchmarks.bench_data", "--child", settings],
                       cwd=REPO_ROOT, check=True)
        return json.loads(result.read_text())


def _peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def _child(source: str, n_docs: int | None, vocab_size: int, notebook: dict, out_dir: str, result: str) -> None:
    """The measured preparation, as 01_data does it (``notebook``: its parameters-cell settings)."""
    baseline = _peak_mb()
    seconds = {}

    start = time.perf_counter()
    docs = load_documents(source)[:n_docs]
    input_mb = sum(len(d.text.encode("utf-8")) for d in docs) / 1e6
    docs_loaded = len(docs)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    docs, _ = clean_documents(docs, lowercase=notebook["lowercase"], min_chars=notebook["min_chars"])
    seconds["clean"] = time.perf_counter() - start

    start = time.perf_counter()
    dedup = find_near_duplicates(docs, shingle_size=notebook["shingle_size"], num_perm=notebook["num_perm"],
                                 threshold=notebook["dedup_threshold"], seed=notebook["seed"])
    docs, _ = apply_dedup_policy(docs, dedup, keep=notebook["keep"])
    seconds["dedup"] = time.perf_counter() - start

    start = time.perf_counter()
    meta = prepare_dataset(docs, out_dir, tokenizer="bpe", vocab_size=vocab_size, val_fraction=notebook["val_fraction"],
                           seed=notebook["seed"], groups=work_groups(docs))
    seconds["bpe+encode+write"] = time.perf_counter() - start

    Path(result).write_text(json.dumps({
        "seconds": seconds, "input_mb": input_mb, "peak_mb": _peak_mb(), "baseline_mb": baseline,
        "docs_loaded": docs_loaded, "docs_kept": len(docs), "tokens": meta["train_tokens"] + meta["val_tokens"],
    }))


if __name__ == "__main__":  # only for the child process; run benchmarks with `python -m benchmarks data`
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    main(parser.parse_args())
