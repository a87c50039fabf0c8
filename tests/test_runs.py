"""Run folders: finding the newest pretrained checkpoint among runs of several kinds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmkit import checkpoint, runs

from .conftest import make_model


def test_newest_checkpoint_is_the_newest_pretraining_run(tmp_path):
    older = runs.new_run(tmp_path, "a-pretrain", {"model": {}})
    checkpoint.save(older / "checkpoints" / "step_000010", make_model(), step=10)
    finetune = runs.new_run(tmp_path, "b-finetune", {"kind": "finetune"})
    checkpoint.save(finetune / "checkpoints" / "step_000005", make_model(), step=5)
    assert runs.newest_checkpoint(tmp_path) == older / "checkpoints" / "step_000010"  # fine-tuning run passed over
    newer = runs.new_run(tmp_path, "c-pretrain", {"kind": "pretrain"})
    assert runs.newest_checkpoint(tmp_path) == older / "checkpoints" / "step_000010"  # no checkpoint there yet
    checkpoint.save(newer / "checkpoints" / "step_000001", make_model(), step=1)
    assert runs.newest_checkpoint(tmp_path) == newer / "checkpoints" / "step_000001"
    (newer / "config.json").write_text(json.dumps({"kind": "sweep"}))
    assert runs.newest_checkpoint(tmp_path) == older / "checkpoints" / "step_000010"
    assert runs.newest_checkpoint(tmp_path / "missing") is None


def test_load_runs_lists_the_method_runs_inside_a_finetune_folder(tmp_path):
    container = runs.new_run(tmp_path, "finetune", {"kind": "finetune", "parent": "x/step_000600"})
    for method in ("full", "lora"):
        run = runs.new_run(container, method, {"kind": "finetune-classification", "method": method})
        (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_loss": 0.9}) + "\n")
    table = runs.load_runs(tmp_path)
    assert sorted(table["method"]) == ["full", "lora"] and (table["kind"] == "finetune-classification").all()
    assert all(r.startswith(container.name + "/") for r in table["run"]) and table["best_val_loss"].tolist() == [0.9, 0.9]
    assert runs.newest_checkpoint(tmp_path) is None  # neither the container nor its runs are pretraining runs


def test_pretraining_runs_are_newest_first_with_a_checkpoint_and_can_be_named(tmp_path):
    made = {}
    for name, kind in (("a", None), ("b", "finetune-classification"), ("c", "pretrain"), ("d", None)):
        made[name] = runs.new_run(tmp_path, name, {"kind": kind} if kind else {})
        if name != "d":  # d has no checkpoint yet
            checkpoint.save(made[name] / "checkpoints" / "step_000001", make_model(), step=1)
    sweep = runs.new_run(tmp_path, "e-sweep", {"kind": "sweep"})
    inner = runs.new_run(sweep, "inner", {})
    checkpoint.save(inner / "checkpoints" / "step_000001", make_model(), step=1)
    assert runs.pretraining_runs(tmp_path) == [inner, made["c"], made["a"]]  # newest (by name) first
    assert runs.pretraining_runs(tmp_path, limit=2) == [inner, made["c"]]
    assert runs.pretraining_runs(tmp_path, names=[made["a"].name, f"{sweep.name}/{inner.name}"]) == [made["a"], inner]
    with pytest.raises(ValueError, match="not pretraining runs"):
        runs.pretraining_runs(tmp_path, names=[made["b"].name])
    assert runs.pretraining_runs(tmp_path / "missing") == []


def test_latest_run_is_the_newest_of_its_kind_holding_the_file(tmp_path):
    older = runs.new_run(tmp_path, "a-finetune", {"kind": "finetune"})
    (older / "classification.csv").write_text("method\n")
    newer = runs.new_run(tmp_path, "b-finetune", {"kind": "finetune"})  # unfinished: no table yet
    runs.new_run(tmp_path, "c-evaluation", {"kind": "evaluation"})
    assert runs.newest_run(tmp_path, "finetune", with_file="classification.csv") == older
    assert runs.newest_run(tmp_path, "finetune") == newer
    assert runs.newest_run(tmp_path, "sweep") is None and runs.newest_run(tmp_path / "nowhere", "finetune") is None
    assert runs.read_config(older) == {"kind": "finetune"} and runs.read_config(tmp_path / "nowhere") == {}


def test_the_runs_root_follows_lmkit_runs_dir(tmp_path):
    """make test sends the notebooks' runs elsewhere through LMKIT_RUNS_DIR; unset, runs/ is used."""
    show = [sys.executable, "-c", "from lmkit.runs import RUNS_DIR; print(RUNS_DIR)"]
    env = {k: v for k, v in os.environ.items() if k != "LMKIT_RUNS_DIR"}
    moved = subprocess.run(show, env={**env, "LMKIT_RUNS_DIR": str(tmp_path)}, capture_output=True, text=True, check=True)
    default = subprocess.run(show, env=env, capture_output=True, text=True, check=True)
    assert Path(moved.stdout.strip()) == tmp_path
    assert Path(default.stdout.strip()) == Path(runs.__file__).resolve().parents[1] / "runs"


def test_the_old_latest_names_still_work_with_a_deprecation_warning(tmp_path):
    from lmkit import checkpoint as ckpt
    from lmkit import runs

    with pytest.warns(DeprecationWarning, match="newest_intact_checkpoint"):
        assert ckpt.latest_valid(tmp_path) is None
    with pytest.warns(DeprecationWarning, match="newest_run"):
        assert runs.latest_run(tmp_path, "finetune") is None


def test_pretrained_checkpoint_trains_once_then_finds_that_run(tmp_path):
    """02 and 04's "the newest checkpoint, or a quick pretraining here", as one call."""
    from lmkit import runs
    from lmkit.data import prepare_dataset

    prepared = tmp_path / "prepared"
    prepare_dataset(["To be, or not to be: that is the question.\n" * 40] * 3, prepared, val_fraction=0.34)
    root = tmp_path / "runs"
    found = runs.pretrained_checkpoint(None, root, prepared=prepared, quick_steps=2, evaluations=1, name="quick")
    (run,) = root.iterdir()
    assert run.name.endswith("-quick") and found == run / "checkpoints" / "step_000002"
    assert runs.pretrained_checkpoint(None, root, prepared=prepared, quick_steps=2) == found  # found, not trained
    assert len(list(root.iterdir())) == 1
    assert runs.pretrained_checkpoint(run, tmp_path / "elsewhere") == found  # a run folder → its checkpoint
