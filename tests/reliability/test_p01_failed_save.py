"""1. A save that fails partway leaves no file at the new path; the previous checkpoint stays
byte-identical and loadable."""

import pytest

from lmkit import CharTokenizer
from lmkit import checkpoint as ckpt

from ..conftest import make_model


def saved(tmp_path, name="step_000001", **kwargs):
    model = make_model().eval()
    tok = CharTokenizer.train("abcdefghijk")
    return model, tok, ckpt.save(tmp_path / "checkpoints" / name, model, tok, **kwargs)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, tok, path = saved(tmp_path, "step_000001")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_json", disk_full)
    with pytest.raises(OSError):
        ckpt.save(path, model, tok)  # overwrite attempt
    with pytest.raises(OSError):
        ckpt.save(tmp_path / "checkpoints" / "step_000002", model, tok)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001"]  # no temp leftovers
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    ckpt.load(path)


def test_exception_in_the_middle_of_writing_weights(tmp_path, monkeypatch):
    model, tok, path = saved(tmp_path, "step_000001")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def half_written(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # a partial file, then the failure
        raise RuntimeError("power cut")

    monkeypatch.setattr(ckpt, "save_file", half_written)  # the weights are the first file written
    with pytest.raises(RuntimeError, match="power cut"):
        ckpt.save(tmp_path / "checkpoints" / "step_000002", model, tok)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
