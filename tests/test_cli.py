"""The command line: documented options, refusal of unknown or invalid ones, and a tiny end-to-end run."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from lmkit import GPTConfig, TrainConfig
from lmkit.cli import main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "2", "--warmup-steps", "1",
        "--log-interval", "1", "--progress", "false", "--samples", "1"]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(f"To be or not to be, that is question number {i}.\n" * 40)
    return folder


@pytest.fixture
def prepared(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["data", "--source", str(corpus), "--out", str(out), "--val-fraction", "0.25"]) == 0
    assert "3 train / 1 val documents" in capsys.readouterr().out
    return out


def test_help_documents_every_config_field():
    out = subprocess.run([sys.executable, "-m", "lmkit", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for f in dataclasses.fields(GPTConfig) + dataclasses.fields(TrainConfig):
        if f.name != "vocab_size":
            assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "context length" in out  # the "why" comments reach --help
    top = subprocess.run([sys.executable, "-m", "lmkit", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "train", "sample", "eval", "run"):
        assert command in top.stdout


def test_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--n-layers", "3"])
    assert e.value.code == 2
    assert "--n-layers" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ({"model": {"n_layer": 2}, "train": {"learnig_rate": 0.1}}, "learnig_rate"),
    ({"n_embd": 100, "n_head": 3}, "n_embd=100 is not divisible by n_head=3"),
    ({"max_steps": "many"}, "max_steps='many' is not a valid int"),
    ({"block_size": 0}, "block_size"),
])
def test_bad_config_file_is_refused_before_any_work(content, message, prepared, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(content))  # JSON is valid YAML
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--config", str(config), "--runs-root", str(runs)]) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()


def test_bad_flag_value_is_refused(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), "--dropout", "lots"]) == 2
    assert "dropout='lots' is not a valid float" in capsys.readouterr().err
    assert not runs.exists()


def test_data_errors_are_reported_without_traceback(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["data", "--source", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "empty.txt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_train_sample_eval_end_to_end(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"learning_rate": 0.005}}))
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), "--name", "tiny",
                 "--config", str(config), *TINY]) == 0
    out = capsys.readouterr().out
    assert "bits per character" in out
    (run,) = runs.iterdir()
    assert run.name.endswith("-tiny")
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["learning_rate"] == 0.005 and saved["model"]["n_embd"] == 16  # file + flags applied
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000003", "step_000006"]
    assert (run / "samples.txt").read_text().strip()
    assert main(["sample", "--checkpoint", str(run), "--prompt", "To be", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("To be")
    assert main(["eval", "--checkpoint", str(run), "--data", str(prepared)]) == 0
    result = json.loads(capsys.readouterr().out)
    final = json.loads((run / "final_metrics.json").read_text())
    assert result["loss"] == pytest.approx(final["loss"]) and result["step"] == 6
    from lmkit.data import prepare_dataset

    prepare_dataset(["zyx wvu " * 40] * 4, tmp_path / "other", val_fraction=0.25)  # another vocabulary
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "other")]) == 2
    assert "different char tokenizer" in capsys.readouterr().err  # ids would mean other characters


def test_resume_continues_the_same_run(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), *TINY]) == 0
    (run,) = runs.iterdir()
    longer = [a if a != "6" else "9" for a in TINY]  # --max-steps 9
    assert main(["train", "--data", str(prepared), "--resume", str(run), *longer]) == 0
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert "step_000009" in {p.name for p in (run / "checkpoints").iterdir()}


def test_train_puts_its_run_where_lmkit_runs_dir_says_like_run_and_sweep(prepared, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    done = subprocess.run([sys.executable, "-m", "lmkit", "train", "--data", str(prepared), *TINY],
                          cwd=tmp_path, env={**os.environ, "LMKIT_RUNS_DIR": str(elsewhere)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(elsewhere.iterdir())) == 1 and not (tmp_path / "runs").exists()


def test_sample_into_a_pipe_that_closes_early_ends_quietly(prepared, tmp_path):
    """``lmkit sample ... | head -c 40``: the text streams, and the reader's leaving is not an error."""
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), *TINY]) == 0
    (run,) = runs.iterdir()
    proc = subprocess.Popen([sys.executable, "-m", "lmkit", "sample", "--checkpoint", str(run), "--prompt", "To be",
                             "--max-new-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = proc.stdout.read(40)  # streamed: there long before 100,000 tokens are done
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert head.startswith(b"To be") and "Traceback" not in err and "error" not in err, err
