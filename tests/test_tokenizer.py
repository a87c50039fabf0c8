"""Tests for lmkit.tokenizer: round trips, vocabularies, errors and JSON persistence."""

import json

import numpy as np
import pytest
import torch

from lmkit import tokenizer as tokenizer_module
from lmkit.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    token_dtype,
    tokenizer_from_dict,
)

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "  indented line\n\tand a tab\n"
) * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT], vocab_size=300)


# --- CharTokenizer ------------------------------------------------------------------------------

def test_char_vocab_is_sorted_set_of_characters():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.kind == "char"
    assert "vocab_size=8" in repr(tok) and "char" in repr(tok)


def test_char_train_on_iterable_and_fit_alias():
    tok = CharTokenizer.train(iter(["ab", "ca", ""]))
    assert tok.chars == ["a", "b", "c"]
    assert CharTokenizer.fit("cab").chars == tok.chars


@pytest.mark.parametrize("text", ["", "hello, world!\n", "naïve café 😀 — 日本語\n\ttab", "\U0010ffff\x00"])
def test_char_round_trip_unicode(text):
    tok = CharTokenizer.train(["naïve café 😀 — 日本語\n\ttab hello, world!", "\U0010ffff\x00"])
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    arr = tok.encode_array(text)
    assert arr.dtype == np.uint16
    assert arr.tolist() == ids
    assert tok.decode(arr) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_char_unknown_characters_raise_value_error_listing_them():
    tok = CharTokenizer.train("abc")
    for encode in (tok.encode, tok.encode_array):
        with pytest.raises(ValueError) as err:
            encode("abXcY😀")
        message = str(err.value)
        assert "3 character(s)" in message
        assert "'X'" in message and "'Y'" in message and "'😀'" in message
        assert "train the tokenizer" in message


def test_char_unknown_characters_are_capped_with_a_count():
    tok = CharTokenizer.train("a")
    with pytest.raises(ValueError, match=r"30 character\(s\).*\(and 10 more\)"):
        tok.encode_array("".join(chr(0x4E00 + i) for i in range(30)))


def test_char_decode_out_of_range_is_value_error():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 3\): 3, -1"):
        tok.decode([0, 3, -1])
    with pytest.raises(TypeError, match="integer"):
        tok.decode([0.5])


def test_char_bad_inputs():
    with pytest.raises(ValueError, match="no characters"):
        CharTokenizer.train("")
    with pytest.raises(TypeError, match="bytes|str"):
        CharTokenizer.train(b"abc")
    with pytest.raises(TypeError, match="item 1"):
        CharTokenizer.train(["ab", 3])
    with pytest.raises(TypeError):
        CharTokenizer.train("ab").encode(["a"])


def test_token_dtype_threshold():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    big = CharTokenizer(chr(i) for i in range(0x4E00, 0x4E00 + 70_000))
    assert big.encode_array(chr(0x4E00 + 69_999)).dtype == np.uint32
    assert big.encode_array(chr(0x4E00 + 69_999)).tolist() == [69_999]


# --- BPETokenizer -------------------------------------------------------------------------------

def test_bpe_trains_requested_vocab_size(bpe):
    assert 257 < bpe.vocab_size <= 300
    assert bpe.kind == "bpe"
    assert bpe.decode([bpe.eot_id]) == EOT
    assert len(bpe.encode("First Citizen:")) < len("First Citizen:")  # merges were learned


@pytest.mark.parametrize(
    "text",
    ["", TEXT[:200], "unseen: Zebra Quixotic 😀 日本語 naïve\r\n", "  x\n\n   y\n \n", f"a{EOT}b", "\x00\x7f\xff"],
)
def test_bpe_round_trip_is_exact_even_for_unseen_characters(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.encode_array(text).tolist() == ids


def test_bpe_encode_array_equals_encode_on_text_cut_into_many_chunks(monkeypatch):
    # Indented lines, runs of blank lines and trailing spaces around the cuts: cutting at the wrong
    # newline changes how GPT-2's pre-tokenizer groups whitespace, hence the ids.
    text = "".join(f"line {i}{' ' * (i % 2)}\n{' ' * (i % 4)}word{i % 7}{chr(10) * (i % 3 + 1)}" for i in range(400))
    tok = BPETokenizer.train([text], vocab_size=400)
    assert {"\n ", "\n\n"} <= {tok.decode([i]) for i in range(tok.vocab_size)}  # whitespace merges exist
    monkeypatch.setattr(tokenizer_module, "_CHUNK_CHARS", 40)  # hundreds of cuts
    ids = tok.encode_array(text)
    assert ids.dtype == np.uint16
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(ids) == text


def test_bpe_vocab_size_below_minimum_names_the_minimum():
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train(["abc"], vocab_size=256)


def test_bpe_decode_out_of_range_is_value_error(bpe):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


# --- persistence --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_round_trip_is_plain_json(tmp_path, bpe, kind):
    tok = CharTokenizer.train(TEXT + "😀") if kind == "char" else bpe
    path = tok.save(tmp_path / "sub" / "tok.json")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)  # plain JSON, nothing pickled
    assert d["type"] == kind
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["tok.json"]  # no temp file left
    cls = type(tok)
    for loaded in (cls.load(path), load_tokenizer(path), tokenizer_from_dict(d)):
        assert type(loaded) is cls
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(TEXT) == tok.encode(TEXT)
        assert loaded.decode(tok.encode(TEXT)) == TEXT


def test_load_with_the_wrong_class_names_the_file(tmp_path):
    path = CharTokenizer.train("abc").save(tmp_path / "char.json")
    with pytest.raises(ValueError, match=r"char\.json.*'char'.*load_tokenizer"):
        BPETokenizer.load(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x80\x81 not utf-8", "not UTF-8"),
        (b'{"type": "char", "chars": ["a", "b"', "not valid JSON"),  # truncated
        (b"garbage", "not valid JSON"),
        (b"[1, 2, 3]", "JSON list"),
        (b'{"chars": ["a"]}', "'type'"),
        (b'{"type": "wordpiece"}', "unknown tokenizer type"),
        (b'{"type": "char"}', "'chars'"),
        (b'{"type": "char", "chars": "abc"}', "'chars'"),
        (b'{"type": "char", "chars": ["ab"]}', "single characters"),
        (b'{"type": "bpe", "tokenizer": {"model": 1}}', "not a valid tokenizers model"),
    ],
)
def test_load_bad_file_is_value_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "broken_tok.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_tokenizer(path)
    assert "broken_tok.json" in str(err.value)
    assert problem in str(err.value)


def test_load_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


def test_a_text_without_newlines_is_still_cut_into_pieces_that_encode_like_the_whole(monkeypatch):
    """One long line (no newline to cut at) used to reach the BPE trainer as a single piece, and its
    peak memory grew with the line (50 MB of Shakespeare on one line: 5.1 GB; cut at spaces: 0.4 GB,
    as with its newlines). Cuts before a space or tab after a non-space keep the ids exact."""
    text = "".join(f"word{i % 9}{' ' * (i % 3 + 1)}{chr(9) * (i % 2)}x{i}, " for i in range(2000))
    assert "\n" not in text
    monkeypatch.setattr(tokenizer_module, "_CHUNK_CHARS", 40)
    pieces = list(tokenizer_module._safe_chunks(text))
    assert len(pieces) > 100 and max(map(len, pieces)) < 120 and "".join(pieces) == text
    tok = BPETokenizer.train([text], vocab_size=400)
    assert tok.encode_array(text).tolist() == tok.encode(text)
