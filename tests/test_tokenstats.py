"""Tests for lmkit.tokenstats: tokenizer comparison, token frequencies, Zipf fit, sample pieces."""

import numpy as np
import pandas as pd
import pytest

from lmkit.tokenizer import BPETokenizer, CharTokenizer
from lmkit.tokenstats import (
    compare_tokenizers,
    printable,
    sample_tokenization,
    token_frequencies,
    zipf_fit,
)

TRAIN = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30,
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n" * 30,
    "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n" * 30,
    "For who would bear the whips and scorns of time,\n" * 10,
]
EVAL = "To sleep, perchance to dream. Ay, there's the rub:\nFor in that sleep of death what dreams may come\n" * 5


@pytest.fixture(scope="module")
def comparison():
    return compare_tokenizers(TRAIN, EVAL, vocab_sizes=(270, 400))


# --- compare_tokenizers ---------------------------------------------------------------------------

def test_table_has_one_row_per_tokenizer_and_the_trained_tokenizers(comparison):
    table = comparison.table
    assert table["tokenizer"].tolist() == ["char", "bpe-270", "bpe-400"]
    assert table["kind"].tolist() == ["char", "bpe", "bpe"]
    assert list(comparison.tokenizers) == table["tokenizer"].tolist()
    assert isinstance(comparison.tokenizers["char"], CharTokenizer)
    assert isinstance(comparison.tokenizers["bpe-400"], BPETokenizer)
    for name, tok in comparison.tokenizers.items():
        row = table.set_index("tokenizer").loc[name]
        assert row["vocab_size"] == tok.vocab_size
        assert row["eval_tokens"] == len(tok.encode(EVAL)) + row["unknown_chars"]
        assert 0 < row["vocab_used"] <= 1
        assert row["train_seconds"] >= 0
    assert set(table.columns) >= {"chars_per_token", "sample_tokens", "vocab_used", "unknown_chars", "train_seconds"}


def test_char_tokenizer_has_one_char_per_token_on_covered_text():
    text = "".join(TRAIN)[:400]
    row = compare_tokenizers(TRAIN, text, vocab_sizes=()).table.iloc[0]
    assert row["tokenizer"] == "char"
    assert row["unknown_chars"] == 0
    assert row["chars_per_token"] == 1.0
    assert row["eval_tokens"] == len(text)


def test_larger_bpe_vocabulary_compresses_at_least_as_well(comparison):
    cpt = comparison.table.set_index("tokenizer")["chars_per_token"]
    assert cpt["bpe-400"] >= cpt["bpe-270"] > cpt["char"]
    assert cpt["bpe-400"] > cpt["bpe-270"]  # 130 more merges must shorten this text


def test_unknown_characters_are_counted_not_raised():
    text = "to be | or not | to bé"  # '|' and 'é' never occur in TRAIN
    table = compare_tokenizers(TRAIN, text, vocab_sizes=(300,)).table.set_index("tokenizer")
    assert table.loc["char", "unknown_chars"] == 3
    assert table.loc["char", "eval_tokens"] == len(text)  # each unknown character counts as one token
    assert table.loc["bpe-300", "unknown_chars"] == 0  # byte-level BPE encodes anything


def test_sample_tokens_default_and_explicit(comparison):
    table = comparison.table.set_index("tokenizer")
    assert comparison.sample == EVAL[: len(comparison.sample)] and 250 <= len(comparison.sample) <= 500
    assert table.loc["char", "sample_tokens"] == len(comparison.sample)
    sample = "To be, or not to be"
    other = compare_tokenizers(TRAIN, EVAL, vocab_sizes=(300,), sample=sample)
    t = other.table.set_index("tokenizer")
    assert t.loc["char", "sample_tokens"] == len(sample)
    assert t.loc["bpe-300", "sample_tokens"] == len(other.tokenizers["bpe-300"].encode(sample)) < len(sample)


def test_vocab_used_is_the_share_of_ids_that_occur():
    row = compare_tokenizers(["abcdef"], "abcabc", vocab_sizes=()).table.iloc[0]
    assert row["vocab_used"] == pytest.approx(3 / 6)


def test_compare_tokenizers_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        compare_tokenizers(TRAIN, EVAL, vocab_sizes=(300, 300))
    with pytest.raises(ValueError, match="eval_text"):
        compare_tokenizers(TRAIN, "", vocab_sizes=())
    with pytest.raises(ValueError, match="257"):
        compare_tokenizers(TRAIN, EVAL, vocab_sizes=(100,))
    with pytest.raises(TypeError, match="train_texts"):
        compare_tokenizers(b"bytes", EVAL)


# --- token_frequencies -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["char", "bpe-400"])
def test_token_frequencies_count_every_token_most_frequent_first(comparison, name):
    tok = comparison.tokenizers[name]
    freqs = token_frequencies(tok, EVAL)
    assert list(freqs.columns) == ["rank", "token_id", "token", "count", "frequency"]
    assert freqs["count"].sum() == len(tok.encode(EVAL))
    assert freqs["rank"].tolist() == list(range(1, len(freqs) + 1))
    assert freqs["count"].is_monotonic_decreasing
    assert freqs["frequency"].sum() == pytest.approx(1.0)
    ids = np.array(tok.encode(EVAL))
    assert freqs["token_id"].iloc[0] == np.bincount(ids).argmax()
    assert freqs["count"].iloc[0] == np.bincount(ids).max()


def test_token_frequencies_hand_counted():
    tok = CharTokenizer.train("ab \n")
    freqs = token_frequencies(tok, "aaab\n\n b")
    assert freqs["token"].tolist() == ["a", "\\n", "b", "␣"]
    assert freqs["count"].tolist() == [3, 2, 2, 1]  # ties ('\n' id 0 and 'b' id 3) by token id
    assert freqs["token_id"].tolist() == [tok.stoi["a"], tok.stoi["\n"], tok.stoi["b"], tok.stoi[" "]]


def test_token_frequencies_skip_unknown_characters():
    tok = CharTokenizer.train("ab")
    freqs = token_frequencies(tok, "abzab")
    assert freqs["count"].sum() == 4


def test_printable_shows_whitespace():
    assert printable(" the\n") == "␣the\\n"
    assert printable("\t\x0c") == "\\t\\x0c"


# --- zipf_fit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [1.0, 0.7])
def test_zipf_fit_recovers_exact_power_law(s):
    C = 5000.0
    ranks = np.arange(1, 201)
    counts = C / ranks**s
    fit = zipf_fit(counts)
    assert fit["s"] == pytest.approx(s, abs=1e-9)
    assert fit["C"] == pytest.approx(C, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    table = pd.DataFrame({"rank": ranks, "count": counts})
    assert zipf_fit(table, min_rank=10, max_rank=100)["s"] == pytest.approx(s, abs=1e-9)


def test_zipf_fit_uses_only_the_rank_range():
    ranks = np.arange(1, 101)
    counts = np.where(ranks <= 10, 1000.0, 1000.0 / ranks**2)  # flat head, then slope 2
    fit = zipf_fit(pd.DataFrame({"rank": ranks, "count": counts}), min_rank=11)
    assert fit["s"] == pytest.approx(2.0, abs=1e-9)
    assert (fit["min_rank"], fit["max_rank"], fit["points"]) == (11, 100, 90)
    assert zipf_fit(counts)["r2"] < 0.99


def test_zipf_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        zipf_fit([10, 5, 0])
    with pytest.raises(ValueError, match="2 distinct ranks"):
        zipf_fit([10, 5, 3], min_rank=3)
    with pytest.raises(ValueError, match="'rank' and 'count'"):
        zipf_fit(pd.DataFrame({"count": [3, 2]}))


# --- sample_tokenization ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["char", "bpe-270", "bpe-400"])
def test_sample_tokenization_joins_back(comparison, name):
    tok = comparison.tokenizers[name]
    text = "To be, or not to be"
    pieces = sample_tokenization(tok, text)
    assert "".join(pieces) == text
    assert len(pieces) == len(tok.encode(text))


def test_sample_tokenization_char_is_one_piece_per_character(comparison):
    assert sample_tokenization(comparison.tokenizers["char"], "To be") == ["T", "o", " ", "b", "e"]


def test_sample_tokenization_keeps_split_utf8_characters_whole(comparison):
    tok = comparison.tokenizers["bpe-270"]
    text = "to bé — 東京"  # bytes never merged in training: each character spans several byte tokens
    pieces = sample_tokenization(tok, text)
    assert "".join(pieces) == text
    assert "é" in pieces and "東" in pieces
