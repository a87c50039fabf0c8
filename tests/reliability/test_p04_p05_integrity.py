"""4. A flipped byte is detected and the checkpoint refused, naming the previous valid one.
5. Pickled payloads in a checkpoint or a vocabulary file are refused and never run; malformed
safetensors are rejected cleanly."""

import json
import pickle
import struct

import pytest

from lmkit import CharTokenizer
from lmkit import checkpoint as ckpt
from lmkit.files import sha256
from lmkit.tokenizer import load_tokenizer

from ..conftest import make_model


def saved(tmp_path, name="step_000001"):
    model = make_model().eval()
    return ckpt.save(tmp_path / "checkpoints" / name, model, CharTokenizer.train("abcdefghijk"))


def reseal(path, name):
    """Rewrite the manifest entry of ``name``, as a forger would."""
    manifest = json.loads((path / "manifest.json").read_text())
    f = path / name
    manifest["files"][name] = {"sha256": sha256(f), "bytes": f.stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_flipped_byte_is_detected_and_previous_named(tmp_path):
    saved(tmp_path, "step_000001")
    path = saved(tmp_path, "step_000002")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors: SHA-256 .*step_000001"):
        ckpt.load(path)
    assert ckpt.resolve(tmp_path).name == "step_000001"  # a run folder falls back to the intact one


class Payload:
    def __reduce__(self):
        return (exec, ("import lmkit; lmkit.PWNED = True",))


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.safetensors"])
def test_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path, name):
    path = saved(tmp_path)
    (path / name).write_bytes(pickle.dumps({"state": Payload()}))
    reseal(path, name)
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load(path) if name == "model.safetensors" else ckpt.load_trainer_state(path)
    import lmkit

    assert not hasattr(lmkit, "PWNED")


def test_pickle_as_a_vocabulary_file_is_refused(tmp_path):
    vocab = tmp_path / "tokenizer.json"
    vocab.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(vocab)
    import lmkit

    assert not hasattr(lmkit, "PWNED")


@pytest.mark.parametrize("damage", ["truncated", "oversized_header", "header_not_json"])
def test_malformed_safetensors_are_rejected(tmp_path, damage):
    path = saved(tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "oversized_header":
        data = struct.pack("<Q", 2**40) + data[8:]
    else:
        data = struct.pack("<Q", 8) + b"not json" + data[16:]
    f.write_bytes(data)
    reseal(path, "model.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load(path)
