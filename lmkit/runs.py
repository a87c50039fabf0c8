"""The run registry: every run below a root as one pandas table (``load_runs``), the newest
pretraining run's checkpoint, the runs 05 evaluates — and, re-exported, the run folders themselves
(``lmkit.rundir``: ``new_run``, ``lock_run``, ...) and the notebook pipelines and sweeps
(``lmkit.pipeline``: ``run_pipeline``, ...; ``lmkit.sweeps``: ``sweep``, ``resume_sweep``), so ``lmkit.runs`` stays the one place a user
looks for runs.

A sweep (``sweep(notebook, grid)``) is a container folder of runs, each with a ``status.json``, plus
``results.csv``; a pipeline (``run_pipeline``) is a container of executed notebooks; a fine-tuning run
of ``04_finetuning`` (kind ``finetune``) holds one run per method. ``load_runs(root)`` gathers every
run below ``root``, containers skipped, into one pandas table.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from .checkpoint import newest_intact_checkpoint, resolve
from .data import ensure_prepared, load_prepared
from .files import read_json_object
from .model import GPT, GPTConfig
from .pipeline import (
    CHECKED_TAG,
    NOTEBOOK_DIR,
    PipelineError,
    check_parameters,
    headline,
    load_profile,
    notebook_parameters,
    numbered_notebooks,
    read_summary,
    run_pipeline,
    store_checked_outputs,
)
from .rundir import (
    LOCK_CLAIM_SECONDS,
    REPO_ROOT,
    RUNS_DIR,
    STATUS_FILE,
    RunInUseError,
    flatten_config,
    load_metrics,
    lock_run,
    new_run,
    open_run,
    read_config,
    val_losses,
)
from .sweeps import expand_grid, resume_sweep, sweep
from .trainer import TrainConfig, Trainer

__all__ = [
    # the registry
    "CONTAINER_KINDS", "newest_checkpoint", "pretrained_checkpoint", "pretraining_runs", "newest_run", "load_runs", "latest_run",
    # run folders (lmkit.rundir)
    "REPO_ROOT", "RUNS_DIR", "STATUS_FILE", "LOCK_CLAIM_SECONDS", "RunInUseError", "new_run", "open_run", "lock_run",
    "read_config", "load_metrics", "flatten_config", "val_losses",
    # notebook pipelines and sweeps (lmkit.pipeline)
    "NOTEBOOK_DIR", "CHECKED_TAG", "PipelineError", "numbered_notebooks", "notebook_parameters", "check_parameters",
    "load_profile", "read_summary", "headline", "run_pipeline", "expand_grid", "sweep", "resume_sweep", "store_checked_outputs",
]


def newest_checkpoint(root=RUNS_DIR) -> Path | None:
    """The newest intact checkpoint of the newest pretraining run directly under ``root``, or None.

    Runs whose config.json sets a ``kind`` (fine-tuning runs, sweeps, pipelines) are passed over:
    what the attention and fine-tuning notebooks want is a pretrained language model.
    """
    for run in sorted((p for p in Path(root).glob("*") if (p / "checkpoints").is_dir()), reverse=True):
        if read_config(run).get("kind", "pretrain") != "pretrain":
            continue
        found = newest_intact_checkpoint(run)
        if found is not None:
            return found
    return None


def pretrained_checkpoint(checkpoint=None, root=RUNS_DIR, *, prepared=None, quick_steps: int = 300,
                          evaluations: int = 3, name: str = "pretrain", seed: int = 0, callbacks=()) -> Path:
    """The pretrained model a lesson builds on, as a verified checkpoint folder: ``checkpoint`` (a
    checkpoint or a run folder: its newest intact one) when given; else the newest pretraining run's
    under ``root`` (what 03_training writes); else a short training here — the default ``GPTConfig``
    for ``quick_steps`` steps, ``evaluations`` evaluations (and checkpoints) along the way, on the
    char-level data in ``prepared`` (``lmkit.data.ensure_prepared``), into a new run ``name`` under
    ``root``, with ``callbacks`` attached. The weights are drawn from torch's generator as it stands
    (a notebook's ``setup(seed)``); ``seed`` drives the batches."""
    found = Path(checkpoint) if checkpoint else newest_checkpoint(root)
    if found is None:
        train, val, tokenizer, _ = load_prepared(ensure_prepared(prepared), GPTConfig.block_size)
        config = TrainConfig(max_steps=quick_steps, eval_interval=max(1, quick_steps // evaluations),
                             eval_batches=4, seed=seed)
        trainer = Trainer(GPT(GPTConfig(vocab_size=tokenizer.vocab_size)), config, train, val,
                          tokenizer=tokenizer, run_dir=new_run(root, name), callbacks=callbacks)
        trainer.train()
        found = trainer.run_dir
    return resolve(found)


def pretraining_runs(root=RUNS_DIR, names=None, limit: int | None = None) -> list[Path]:
    """Pretraining run folders below ``root`` (sweep runs included) that hold an intact checkpoint,
    newest first by folder name. ``names``: only these runs (folder names or paths relative to
    ``root``), in that order; a name that is not such a run is a ValueError listing what there is.
    ``limit``: at most this many (the newest)."""
    root = Path(root)
    found = [run for run in (_run_folders(root) if root.is_dir() else [])
             if read_config(run).get("kind", "pretrain") == "pretrain" and newest_intact_checkpoint(run) is not None]
    found.sort(key=lambda run: run.name, reverse=True)
    if names:
        by_name = {**{run.name: run for run in found}, **{run.relative_to(root).as_posix(): run for run in found}}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"runs {missing} are not pretraining runs with a checkpoint under {root}; there are "
                             f"{[run.relative_to(root).as_posix() for run in found][:20]}")
        found = [by_name[n] for n in names]
    return found[:limit] if limit is not None else found



CONTAINER_KINDS = ("sweep", "pipeline", "finetune")  # config.json "kind" of folders that hold runs, not one run
def newest_run(root=RUNS_DIR, kind: str = "pretrain", with_file: str | None = None) -> Path | None:
    """The newest folder directly under ``root`` whose ``config.json`` names ``kind`` (e.g. ``"finetune"``,
    ``"evaluation"``) and, when ``with_file`` is given, that holds that file (a finished run: 04's
    ``classification.csv``); None when there is none."""
    root = Path(root)
    found = [p for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and read_config(p).get("kind") == kind
             and (with_file is None or (p / with_file).is_file())]
    return max(found, key=lambda p: p.name, default=None)


def latest_run(root=RUNS_DIR, kind: str = "pretrain", with_file: str | None = None) -> Path | None:
    """Deprecated name of ``newest_run`` (kept for one release)."""
    warnings.warn("lmkit.runs.latest_run is now newest_run", DeprecationWarning, stacklevel=2)
    return newest_run(root, kind, with_file)


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
        row = {"run": run.relative_to(root).as_posix(), "path": str(run), **flatten_config(read_config(run))}
        if (run / STATUS_FILE).is_file():
            status = read_json_object(run / STATUS_FILE)
            row["status"], row["error"] = status.get("status"), status.get("error")
        m = load_metrics(run)
        if not m.empty:
            row["steps"] = int(m["step"].max())
            if "train_loss" in m:
                row["final_train_loss"] = m["train_loss"].dropna().iloc[-1] if m["train_loss"].notna().any() else None
            row.update(val_losses(m))
        rows.append(row)
    return pd.DataFrame(rows)
