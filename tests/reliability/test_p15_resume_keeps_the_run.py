"""15. A resume continues *the run*: its model and training settings come from the checkpoint; of the
settings given again only max_steps, the intervals, keep_last, device, dtype and compile may change
(with a warning, recorded in config.json), any other change is refused before anything is written.
Its metric history before the resume point survives byte for byte; its data must be the run's
tokenizer's; a checkpoint outside its run folder goes on in a new run folder, never in the folder it
was copied to. Through the command line as typed and through ``Trainer``."""

import json
import shutil

import pytest

from lmkit import TrainConfig, Trainer
from lmkit import checkpoint as ckpt
from lmkit.cli import main
from lmkit.data import prepare_dataset

from ..conftest import make_config, make_model

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-batches", "1", "--warmup-steps", "1", "--progress", "false", "--samples", "0"]
SLOW_RUN = ["--learning-rate", "1e-4", "--lr-schedule", "constant", "--max-steps", "40", "--eval-interval", "10",
            "--log-interval", "1"]


@pytest.fixture
def prepared(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(["To be, or not to be: that is the question.\n" * 60] * 3, out, val_fraction=0.34)
    return out


def train(prepared, runs, *args) -> int:
    return main(["train", "--data", str(prepared), "--runs-root", str(runs), *TINY, *args])


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def cut_back_to(run, step):
    """What a crash leaves: the checkpoints after ``step`` are gone."""
    for path in ckpt.list_checkpoints(run):
        if ckpt.read_info(path).step > step:
            shutil.rmtree(path)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_without_flags_keeps_the_runs_learning_rate_and_schedule(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    cut_back_to(run, 20)
    assert main(["train", "--resume", str(run), "--progress", "false", "--samples", "0"]) == 0
    steps = [r for r in rows(run) if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert {r["lr"] for r in steps if r["step"] > 20} == {1e-4}  # not the default 3e-3 cosine
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["learning_rate"] == 1e-4 and config["train"]["lr_schedule"] == "constant"
    assert config["resumes"] == [{"from": str(run / "checkpoints" / "step_000020"), "step": 20, "changed": {}}]
    assert [p.name for p in runs.iterdir()] == [run.name]  # the same run, no new folder


@pytest.mark.parametrize("flags, named", [
    (["--learning-rate", "3e-3"], "learning_rate 0.0001 → 0.003"),
    (["--lr-schedule", "cosine"], "lr_schedule 'constant' → 'cosine'"),
    (["--batch-size", "4"], "batch_size 2 → 4"),
    (["--seed", "7"], "seed 1337 → 7"),
    (["--n-layer", "2"], "another model (n_layer 1 → 2)"),
    (["--max-steps", "10"], "already at step 20, past max_steps=10"),
])
def test_a_resume_that_would_change_the_run_is_refused_before_anything_is_written(flags, named, prepared, tmp_path,
                                                                                 capsys):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    cut_back_to(run, 20)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(["train", "--resume", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


def test_max_steps_and_intervals_may_change_on_resume_with_a_warning_recorded_in_the_config(prepared, tmp_path,
                                                                                           capsys):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "50", "--eval-interval", "5",
                 "--progress", "false", "--samples", "0"]) == 0
    err = capsys.readouterr().err
    assert "resuming with max_steps 40 → 50" in err and "resuming with eval_interval 10 → 5" in err
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 50 and config["train"]["eval_interval"] == 5
    assert config["resumes"][-1]["changed"] == {"max_steps": [40, 50], "eval_interval": [10, 5]}
    assert ckpt.resolve(run).name == "step_000050"
    # the finished run again, without a larger max_steps: nothing to do, said before any work
    assert main(["train", "--resume", str(run)]) == 2
    assert "end of its run (step 50 = max_steps)" in capsys.readouterr().err


def test_history_before_the_resume_point_survives_byte_for_byte(prepared, tmp_path):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["step"] <= 30]
    cut_back_to(run, 30)
    assert main(["train", "--resume", str(run), "--log-interval", "10", "--progress", "false", "--samples", "0"]) == 0
    after = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert after[:len(kept)] == kept  # 30 rows of one a step, and the evaluations, as they were
    assert [json.loads(line)["step"] for line in after[len(kept):] if "train_loss" in line] == [40]


def test_resume_on_data_of_another_tokenizer_is_refused_naming_both(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    cut_back_to(run, 20)
    other = tmp_path / "other"  # as many characters as the run's, other ones: same vocabulary size
    n = json.loads((prepared / "meta.json").read_text())["vocab_size"]
    letters = "".join(chr(0x430 + i) for i in range(n - 2)) + " \n"
    prepare_dataset([letters * 40] * 3, other, val_fraction=0.34)
    assert json.loads((other / "meta.json").read_text())["vocab_size"] == n
    capsys.readouterr()
    before = snapshot(runs)
    assert main(["train", "--resume", str(run), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"char tokenizer of {n} ids" in err and str(other) in err and "would mean other text" in err
    assert snapshot(runs) == before


def test_a_checkpoint_outside_its_run_folder_goes_on_in_a_new_run_folder(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(prepared, runs, *SLOW_RUN) == 0
    (run,) = runs.iterdir()
    somewhere = tmp_path / "somewhere"
    (somewhere / "models").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step_000020", somewhere / "models" / "step_000020")
    (somewhere / "metrics.jsonl").write_text("the user's own file\n")
    (somewhere / "samples.txt").write_text("the user's own samples\n")
    before = snapshot(somewhere)
    assert main(["train", "--resume", str(somewhere / "models" / "step_000020"), "--data", str(prepared),
                 "--runs-root", str(runs), "--progress", "false", "--samples", "0"]) == 0
    assert snapshot(somewhere) == before  # nothing written beside the copy
    (new,) = [p for p in runs.iterdir() if p != run]
    config = json.loads((new / "config.json").read_text())
    assert config["resumed_from"] == str(somewhere / "models" / "step_000020")
    assert ckpt.resolve(new).name == "step_000040"
    assert [r["step"] for r in rows(new) if "train_loss" in r] == list(range(1, 41))  # its history came along


def test_the_python_api_holds_a_resume_to_the_same_rule(token_data, tmp_path, caplog):
    train_ds, val_ds = token_data
    Trainer(make_model(), make_config(max_steps=8, learning_rate=1e-3), train_ds, val_ds, run_dir=tmp_path).train()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"define the run: learning_rate 0\.001 → 0\.003"):
        Trainer(make_model(), make_config(max_steps=12), train_ds, val_ds, run_dir=tmp_path, resume_from=tmp_path)
    assert snapshot(tmp_path) == before
    resumed = Trainer(make_model(), None, train_ds, val_ds, run_dir=tmp_path, resume_from=tmp_path)  # its own
    assert resumed.config == TrainConfig.from_dict(ckpt.read_info(tmp_path).train_config)
    with caplog.at_level("WARNING", logger="lmkit.trainer"):
        longer = Trainer(make_model(), make_config(max_steps=12, learning_rate=1e-3), train_ds, val_ds,
                         run_dir=tmp_path, resume_from=tmp_path)
    assert "max_steps 8 → 12" in caplog.text and longer.train()["step"].max() == 12
