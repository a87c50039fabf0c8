"""10. Bad data input fails in preparation with the file name and the reason, writing nothing.
11. Bad generation input gives a clear error (or a documented crop with a warning), no deep traceback.
12. Bad CLI / notebook parameters are refused naming the parameter; a failing notebook cell exits
non-zero naming the cell while earlier artefacts stay."""

import pytest
import torch
import yaml

from lmkit import data, runs
from lmkit.cli import main

from ..conftest import make_model


def bad_source(tmp_path, case):
    if case == "folder without text files":
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "notes.md").write_text("# not a .txt file")
        return tmp_path / "src", "no .txt files"
    f = tmp_path / f"{case.replace(' ', '_')}.txt"
    payload = {"empty file": b"", "shorter than one block": b"short text\n",
               "invalid UTF-8": b"good text \xff\xfe then bad", "binary file": b"\x7fELF\x00\x00\x01\x02" * 50}[case]
    f.write_bytes(payload)
    reason = {"empty file": "empty", "shorter than one block": "block_size=64", "invalid UTF-8": "offset 10",
              "binary file": "binary"}[case]
    return f, reason


@pytest.mark.parametrize("case", ["empty file", "shorter than one block", "invalid UTF-8", "binary file",
                                  "folder without text files"])
def test_bad_corpus_is_refused_naming_file_and_reason_and_writes_nothing(case, tmp_path):
    source, reason = bad_source(tmp_path, case)
    out = tmp_path / "prepared"
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        data.prepare_dataset(source, out, block_size=64)
    assert source.name in str(err.value) and reason in str(err.value), str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


@pytest.fixture
def checkpoint_run(tmp_path):
    data.prepare_dataset(["abc def ghi jkl\n" * 50] * 3, tmp_path / "prep", val_fraction=0.34)
    argv = ["train", "--data", str(tmp_path / "prep"), "--runs-root", str(tmp_path / "runs"), "--n-layer", "1",
            "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "2", "--max-steps", "2",
            "--eval-interval", "2", "--eval-batches", "1", "--progress", "false", "--samples", "0"]
    assert main(argv) == 0
    return next((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--prompt", "XYZ"], "not in the vocabulary"),
    (["--max-new-tokens", "-1"], "max_new_tokens=-1"),
    (["--temperature", "0"], "temperature=0.0 must be > 0"),
    (["--top-p", "1.5"], "top_p=1.5"),
    (["--top-p", "0"], "top_p=0.0"),
    (["--top-k", "0"], "top_k=0"),
])
def test_bad_generation_input_is_a_clear_error(args, message, checkpoint_run, capsys):
    assert main(["sample", "--checkpoint", str(checkpoint_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_prompt_longer_than_context_is_cropped_with_a_warning():
    model = make_model().eval()
    with pytest.warns(UserWarning, match="longer than block_size=8"):
        assert model.generate(torch.zeros(1, 30, dtype=torch.long), 2).shape == (1, 32)


@pytest.mark.parametrize("argv, message", [
    (["--n-layers", "2"], "--n-layers"),
    (["--n-layer", "two"], "n_layer='two' is not a valid int"),
    (["--n-embd", "100", "--n-head", "3"], "n_embd=100 is not divisible by n_head=3"),
    (["--block-size", "0"], "block_size"),
])
def test_bad_cli_parameters_are_refused_before_any_work(argv, message, tmp_path, capsys):
    try:
        code = main(["train", "--runs-root", str(tmp_path / "runs"), "--data", str(tmp_path / "missing"), *argv])
    except SystemExit as e:  # argparse's own refusal of an unknown flag
        code = e.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_notebook_parameters_are_refused_before_anything_runs(tmp_path):
    profile = tmp_path / "bad.yaml"
    for content, message in (({"03_training": {"n_layers": 2}}, "n_layers"),
                             ({"03_training": {"max_steps": "lots"}}, "max_steps='lots' is not a valid int")):
        profile.write_text(yaml.safe_dump(content))
        with pytest.raises(ValueError, match=message):
            runs.run_pipeline([runs.NOTEBOOK_DIR / "03_training.ipynb"], profile=profile, runs_root=tmp_path / "r")
        assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_out_of_range_notebook_parameter_fails_naming_it_and_the_cell(tmp_path):
    data.prepare_dataset(["abc def ghi jkl\n" * 50] * 3, tmp_path / "prep", val_fraction=0.34)
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({"03_training": {"prepared_dir": str(tmp_path / "prep"), "block_size": 8,
                                                       "n_embd": 100, "n_head": 3}}))
    with pytest.raises(runs.PipelineError, match=r"03_training.ipynb failed in cell \d+ .*n_embd=100"):
        runs.run_pipeline([runs.NOTEBOOK_DIR / "03_training.ipynb"], profile=profile, runs_root=tmp_path / "r")
    (out,) = (tmp_path / "r").iterdir()
    assert (out / "03_training.ipynb").exists() and (out / "03_training.html").exists()


# --- round two: well-formed input of the wrong shape, values out of range, refused before any work

TRAIN_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "2",
              "--max-steps", "2", "--eval-interval", "2", "--eval-batches", "1", "--progress", "false",
              "--samples", "0"]


@pytest.fixture
def prepared(tmp_path):
    data.prepare_dataset(["abc def ghi jkl\n" * 50] * 3, tmp_path / "prep", val_fraction=0.34)
    return tmp_path / "prep"


@pytest.mark.parametrize("config, message", [
    ({"dropout": [0.1]}, "dropout=[0.1] is a list; give a single float"),
    ({"train": {"learning_rate": {"peak": 1}}}, "learning_rate={'peak': 1} is a dict"),
    ({"max_steps": float("inf")}, "max_steps=inf is not a valid int"),
])
def test_config_values_of_the_wrong_shape_are_refused_naming_them(config, message, prepared, tmp_path, capsys):
    import json

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    assert main(["train", "--data", str(prepared), "--runs-root", str(tmp_path / "runs"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_binary_config_file_is_refused_naming_it(prepared, tmp_path, capsys):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert main(["train", "--data", str(prepared), "--runs-root", str(tmp_path / "runs"), "--config", str(path)]) == 2
    assert f"config file {path} is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--beta1", "5"], "beta1=5.0 must be in [0, 1)"),
    (["--beta2", "1"], "beta2=1.0 must be in [0, 1)"),
    (["--dtype", "fp8"], "dtype='fp8'; use 'auto', 'float32' or 'bfloat16'"),
    (["--dtype", "bfloat16"], "needs a CUDA GPU"),
    (["--weight-decay", "-1"], "weight_decay=-1.0 must be a finite number >= 0"),
    (["--learning-rate", "inf"], "learning_rate=inf must be a finite number > 0"),
    (["--learning-rate", "nan"], "learning_rate=nan must be a finite number > 0"),
    (["--grad-clip", "inf"], "grad_clip=inf must be a finite number > 0"),
    (["--device", "tpu"], "device='tpu' is not a device lmkit can use"),
    (["--device", "cuda:x"], "device='cuda:x' is not a device lmkit can use"),
    (["--batch-size", "0"], "batch_size=0 must be a positive integer"),
    (["--n-embd", "128", "--n-layer", "4", "--batch-size", "1000000"], "the first training step needs about"),
])
def test_out_of_range_options_are_refused_before_a_run_folder_exists(flags, message, prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), *TRAIN_TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not runs.exists()


@pytest.mark.parametrize("args, message", [
    (["--stride", "0"], "stride=0 must be in [1,"),
    (["--batch-size", "0"], "batch_size=0 must be a positive integer"),
])
def test_bad_evaluation_settings_are_refused(args, message, checkpoint_run, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint_run), "--data", str(checkpoint_run.parent.parent / "prep"),
                 *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--max-new-tokens", "10000000"], "above the limit of 100,000"),
    (["--num-samples", "0"], "--num-samples 0 must be at least 1"),
])
def test_more_bad_generation_input_is_a_clear_error(args, message, checkpoint_run, capsys):
    assert main(["sample", "--checkpoint", str(checkpoint_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_run_folder_that_cannot_be_made_is_one_message_naming_it(prepared, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", "--data", str(prepared), "--runs-root", str(blocker / "runs"), *TRAIN_TINY]) == 1
    err = capsys.readouterr().err
    assert str(blocker) in err and "part of that path is a file" in err and "Traceback" not in err


def test_a_full_disk_during_a_save_is_one_message_and_the_run_can_resume(prepared, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from lmkit import checkpoint as ckpt

    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), *TRAIN_TINY]) == 0
    (run,) = runs.iterdir()
    real = ckpt.save_file

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "4"]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "--resume" in err and "Traceback" not in err, err
    monkeypatch.setattr(ckpt, "save_file", real)
    assert ckpt.resolve(run).name == "step_000002"  # the checkpoint before is intact
    assert main(["train", "--resume", str(run), "--max-steps", "4"]) == 0


def test_a_context_that_cannot_fit_is_refused_with_the_figures(token_data):
    from lmkit import GPT, GPTConfig, TrainConfig, Trainer
    from lmkit.trainer import check_first_step_fits

    with pytest.raises(ValueError, match=r"needs about .* [GT]B .*batch_size=32 × block_size=1000000; .*\), but cpu has .* available"):
        check_first_step_fits(GPTConfig(vocab_size=84, block_size=1_000_000), TrainConfig(), "cpu")
    train, val = token_data
    with pytest.raises(ValueError, match="the first training step needs about"):
        Trainer(GPT(GPTConfig(vocab_size=11, block_size=8)), TrainConfig(batch_size=10**9), train, val)


def test_a_model_too_big_for_memory_is_refused_before_allocating_it():
    from lmkit import GPT, GPTConfig

    with pytest.raises(ValueError, match=r"has 128,000,000,\d{3},\d{3} parameters: .* TB of float32 weights.*available"):
        GPT(GPTConfig(vocab_size=10**12))
