"""16. What belongs together is checked together: a checkpoint's tokenizer against its model (at save
and at load), a dataset's token ids against its tokenizer and the model (before a run folder
exists), a prepared folder's contents before it is replaced, a checkpoint's files for links out."""


import numpy as np
import pytest

from lmkit import CharTokenizer, data
from lmkit import checkpoint as ckpt
from lmkit.cli import main

from ..conftest import make_model
from .forge import reseal


def test_a_tokenizer_that_is_not_the_models_is_refused_at_save(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer has 3 ids but the model's vocabulary has 11"):
        ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abc"))
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("chars", ["abc", "".join(chr(0x4E00 + i) for i in range(5000))])
def test_a_checkpoint_whose_tokenizer_is_not_its_models_is_refused_at_load(chars, tmp_path, capsys):
    path = ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abcdefghijk"))
    CharTokenizer.train(chars).save(path / "tokenizer.json")  # replaced, and the manifest forged to match
    reseal(path, "tokenizer.json")
    n = len(chars)
    with pytest.raises(ckpt.CheckpointError, match=rf"tokenizer has {n} ids but the model's vocabulary has 11"):
        ckpt.load(path)
    assert main(["sample", "--checkpoint", str(path), "--max-new-tokens", "5"]) == 2
    captured = capsys.readouterr()
    assert f"tokenizer has {n} ids" in captured.err and captured.out == "" and "Traceback" not in captured.err


def test_token_ids_outside_the_vocabulary_are_refused_before_a_run_folder_exists(tmp_path, capsys):
    prepared = tmp_path / "prep"
    meta = data.prepare_dataset(["To be, or not to be: that is the question.\n" * 30] * 3, prepared,
                                val_fraction=0.34)
    ids = np.fromfile(prepared / "train.bin", dtype=np.uint16)
    ids[5] = meta["vocab_size"]  # one id past the end
    ids.tofile(prepared / "train.bin")
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(prepared), "--runs-root", str(runs), "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--block-size", "8", "--max-steps", "2", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert f"train.bin holds token id {meta['vocab_size']}" in err and "Traceback" not in err
    assert not runs.exists()


def test_the_trainer_refuses_data_the_model_has_no_embedding_for(token_data):
    from lmkit import Trainer

    from ..conftest import make_config

    train, val = token_data  # ids 0..10
    with pytest.raises(ValueError, match=r"token id 10, but the model's vocabulary has 8 ids"):
        Trainer(make_model(vocab_size=8), make_config(), train, val)


def test_data_out_into_a_prepared_folder_with_other_files_is_refused_and_deletes_nothing(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 60)
    out = tmp_path / "prepared"
    assert main(["data", "--source", str(corpus), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("my notes")
    (out / "figures").mkdir()
    before = {p.name for p in out.iterdir()}
    assert main(["data", "--source", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "also holds ['figures', 'notes.txt']" in err and "would delete" in err
    assert {p.name for p in out.iterdir()} == before and (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    (out / "figures").rmdir()
    assert main(["data", "--source", str(corpus), "--out", str(out)]) == 0  # lmkit's own files: replaced


def test_a_checkpoint_file_that_links_outside_the_checkpoint_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abcdefghijk"))
    elsewhere = tmp_path / "elsewhere.json"
    (path / "tokenizer.json").rename(elsewhere)
    (path / "tokenizer.json").symlink_to(elsewhere)  # same bytes, same hash: only the link is wrong
    with pytest.raises(ckpt.CheckpointError, match=r"tokenizer.json: is a symbolic link \(to .*elsewhere.json\)"):
        ckpt.load(path)


def test_a_lock_held_by_a_live_unrelated_process_says_how_to_clear_it(tmp_path):
    import os
    import subprocess
    import sys

    from lmkit.runs import RunInUseError, lock_run

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(stranger.pid))  # a pid reused by a program that is not lmkit
        with pytest.raises(RunInUseError, match=rf"process {stranger.pid} may be another program.*delete "
                                                rf"{tmp_path / '.lock'}"):
            lock_run(tmp_path)
        assert (tmp_path / ".lock").read_text() == str(stranger.pid) and os.getpid() != stranger.pid
    finally:
        stranger.kill()
        stranger.wait()
