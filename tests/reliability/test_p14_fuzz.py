"""14. Random bytes fed to every loader (tokenizer JSON, meta.json, checkpoint files, corpus files)
raise only the documented exceptions. Seeded and bounded in time."""

import random
import time

import pytest

from lmkit import CharTokenizer, data
from lmkit import checkpoint as ckpt
from lmkit.tokenizer import load_tokenizer

from ..conftest import make_model
from . import forge

DOCUMENTED = (ValueError, FileNotFoundError)  # CheckpointError is a ValueError
BUDGET_S = 1.5  # per loader


def mutations(valid: bytes, rng: random.Random):
    """Random bytes, truncations and byte flips of a valid file."""
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        elif kind == 1:
            yield valid[: rng.randrange(len(valid) + 1)]
        else:
            b = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)


def fuzz(path, valid: bytes, load, seed: int, after_write=None):
    rng, start, tried = random.Random(seed), time.time(), 0
    for blob in mutations(valid, rng):
        if time.time() - start > BUDGET_S:
            break
        path.write_bytes(blob)
        if after_write:
            after_write()
        try:
            load()
        except DOCUMENTED:
            pass
        except Exception as e:  # anything else is a bug: report the input
            pytest.fail(f"{type(e).__name__}: {e} for {blob[:80]!r}")
        tried += 1
    assert tried > 20


def test_fuzz_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    CharTokenizer.train("hello world").save(path)
    fuzz(path, path.read_bytes(), lambda: load_tokenizer(path), seed=1)


def test_fuzz_meta_json(tmp_path):
    meta = data.prepare_dataset(["some text here\n" * 20] * 2, tmp_path / "prep", val_fraction=0.5)
    path = tmp_path / "prep" / "meta.json"
    assert meta["train_tokens"] > 0
    fuzz(path, path.read_bytes(), lambda: data.load_prepared(tmp_path / "prep", 4), seed=2)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "manifest.json"])
@pytest.mark.parametrize("reseal", [False, True], ids=["hash-checked", "resealed"])
def test_fuzz_checkpoint_files(tmp_path, name, reseal):
    path = ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abcdefghijk"))
    target = path / name

    def fix_manifest():  # a forger who also rewrites the hashes reaches the parsers behind them
        if reseal and name != "manifest.json":
            forge.reseal(path, name)

    fuzz(target, target.read_bytes(), lambda: ckpt.load(path), seed=3, after_write=fix_manifest)


def test_fuzz_corpus_files(tmp_path):
    path = tmp_path / "corpus.txt"
    valid = b"Now is the winter of our discontent\n" * 10
    fuzz(path, valid, lambda: data.load_documents(path), seed=4)
