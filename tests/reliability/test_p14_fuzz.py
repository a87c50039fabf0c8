"""14. Random bytes fed to every loader (tokenizer JSON, meta.json, checkpoint files, corpus files)
raise only the documented exceptions; so does valid JSON of the wrong shape (wrong types, missing and
unknown keys) in every JSON file lmkit reads, with checkpoint manifests resealed so the hash check does
not hide it. Seeded and bounded in time."""

import copy
import json
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


def feed(path, inputs, load, after_write=None, documented=DOCUMENTED) -> None:
    """Write each of ``inputs`` (bytes) to ``path`` for BUDGET_S seconds and call ``load``: it may raise
    only a ``documented`` exception. ``after_write`` runs after each write (to reseal a manifest)."""
    start, tried = time.time(), 0
    for blob in inputs:
        if time.time() - start > BUDGET_S:
            break
        path.write_bytes(blob)
        if after_write:
            after_write()
        try:
            load()
        except documented:
            pass
        except Exception as e:  # anything else is a bug: report the input
            pytest.fail(f"{type(e).__name__}: {e} for {blob[:300]!r}")
        tried += 1
    assert tried > 20


def fuzz(path, valid: bytes, load, seed: int, after_write=None):
    feed(path, mutations(valid, random.Random(seed)), load, after_write)


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


# --- structure-aware: valid JSON of the wrong shape (types, missing and extra keys), resealed -------

ODD_VALUES = [None, True, False, -1, 0, 10**12, 10**400, 1.5, -0.0, float("nan"), float("inf"), "", "x" * 300,
              [], [1, 2], [[]], {}, {"a": 1}]


def _places(obj, path=()):
    """Every (container, key) in a JSON value, depth first."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield obj, k
            yield from _places(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield obj, i
            yield from _places(v, path + (i,))


def structural_mutations(valid, rng: random.Random):
    """Copies of ``valid`` with one to three changes each: a value replaced by one of another type or
    range, a key dropped, an unknown key added, the whole document swapped for a value of another type."""
    while True:
        obj = copy.deepcopy(valid)
        if rng.random() < 0.05:
            yield rng.choice(ODD_VALUES)
            continue
        for _ in range(rng.randint(1, 3)):
            places = list(_places(obj))
            if not places:
                break
            container, key = rng.choice(places)
            op = rng.randrange(3)
            if op == 0 or isinstance(container, list):
                container[key] = copy.deepcopy(rng.choice(ODD_VALUES))
            elif op == 1:
                del container[key]
            else:
                container[f"extra_{rng.randrange(99)}"] = copy.deepcopy(rng.choice(ODD_VALUES))
        yield obj


def fuzz_structure(path, load, seed: int, after_write=None, documented=DOCUMENTED):
    valid = json.loads(path.read_text())
    inputs = (json.dumps(obj).encode() for obj in structural_mutations(valid, random.Random(seed)))
    feed(path, inputs, load, after_write, documented)
    path.write_text(json.dumps(valid))
    if after_write:
        after_write()


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "tokenizer.json"])
def test_fuzz_checkpoint_json_structure(tmp_path, name):
    path = ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abcdefghijk"), metrics=[{"step": 1}])
    fuzz_structure(path / name, lambda: ckpt.load(path), seed=5, after_write=lambda: forge.reseal(path, name))


def test_fuzz_manifest_structure(tmp_path):
    path = ckpt.save(tmp_path / "ckpt", make_model(), CharTokenizer.train("abcdefghijk"))
    fuzz_structure(path / "manifest.json", lambda: ckpt.load(path), seed=6)


def test_fuzz_trainer_state_structure(token_data, tmp_path):
    """The trainer state is read on resume: the Trainer is built from it and takes a step."""
    from lmkit import Trainer

    from ..conftest import make_config

    train, val = token_data
    Trainer(make_model(), make_config(max_steps=2), train, val, run_dir=tmp_path / "run").train()
    path = ckpt.resolve(tmp_path / "run")

    def resume_and_step():
        Trainer(make_model(), None, train, val, resume_from=path).train_step()

    fuzz_structure(path / "trainer_state.json", resume_and_step, seed=7,
                   after_write=lambda: forge.reseal(path, "trainer_state.json"),
                   documented=(*DOCUMENTED, FloatingPointError))  # a legal but absurd rate: property 7


def test_fuzz_prepared_meta_structure(tmp_path):
    data.prepare_dataset(["some text here\n" * 20] * 2, tmp_path / "prep", val_fraction=0.5)
    fuzz_structure(tmp_path / "prep" / "meta.json", lambda: data.load_prepared(tmp_path / "prep", 4), seed=8)


def test_fuzz_training_config_file_structure(tmp_path):
    from lmkit.cli import build_configs, read_config_file

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1},
                                "train": {"learning_rate": 0.003, "max_steps": 10, "grad_clip": 1.0,
                                          "keep_last": 2, "lr_schedule": "cosine", "device": "cpu"}}))
    fuzz_structure(path, lambda: build_configs(read_config_file(path), vocab_size=11), seed=9)


def test_fuzz_notebook_parameters_file_structure(tmp_path):
    import yaml

    from lmkit import runs

    declared = {"steps": {"inferred_type_name": "int"}, "rate": {"inferred_type_name": "float"},
                "name": {"inferred_type_name": "str"}, "full": {"inferred_type_name": "bool"},
                "root": {"inferred_type_name": "Optional[str]"}}
    path = tmp_path / "p.json"  # JSON is YAML
    path.write_text(json.dumps({"all": {"steps": 3}, "01_a": {"rate": 0.1, "name": "x", "full": True, "root": None}}))

    def load():
        profile = runs.load_profile(path)
        for section in profile.values():
            runs.check_parameters(tmp_path / "01_a.ipynb", {k: v for k, v in section.items()}, declared)

    assert yaml.safe_load(path.read_text())
    fuzz_structure(path, load, seed=10)
