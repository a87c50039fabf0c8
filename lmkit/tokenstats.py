"""Tokenizer statistics: compare tokenizers on held-out text, count tokens, fit Zipf's law.

What notebook 01_data shows about tokenization, as functions that return tables:

- ``compare_tokenizers``: train a character tokenizer and byte-level BPE at several vocabulary
  sizes on the same texts, then measure each on held-out text: characters per token (compression),
  tokens for a sample passage, the share of the vocabulary the held-out text uses, characters the
  char vocabulary lacks, training time.
- ``token_frequencies``: how often each token occurs, ranked (``np.bincount`` over the id array;
  no per-token Python loop over the text).
- ``zipf_fit``: least-squares fit of ``log(count) = log(C) - s * log(rank)``. Zipf (1935, *The
  Psycho-Biology of Language*) observed ``s`` close to 1 for word counts of natural language;
  subword and character counts bend away from a straight line, which is worth seeing.
- ``sample_tokenization``: the pieces a tokenizer cuts a short text into ("To be, or not to be").

Tokens are handled as numpy arrays throughout (``encode_array``), never as Python lists of a
whole corpus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .params import is_int
from .tokenizer import BPETokenizer, CharTokenizer, TokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZES = (512, 1024, 2048)
SAMPLE_CHARS = 500  # the default sample passage: about this many leading characters of the eval text

_PRINTABLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}


@dataclass(frozen=True)
class TokenizerComparison:
    """What ``compare_tokenizers`` returns: the table, the trained tokenizers and the sample passage.

    ``tokenizers`` maps the table's ``tokenizer`` names ("char", "bpe-512", ...) to the trained
    objects, so a notebook can reuse them without training again.
    """

    table: pd.DataFrame
    tokenizers: dict[str, TokenizerBase] = field(repr=False)
    sample: str = field(repr=False)

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def printable(piece: str) -> str:
    """``piece`` with whitespace made visible: newline as ``\\n``, tab ``\\t``, space ``␣``;
    other control characters as escapes (``\\x0c``)."""
    out = []
    for ch in piece:
        if ch in _PRINTABLE:
            out.append(_PRINTABLE[ch])
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def _lenient_ids(tok: TokenizerBase, text: str) -> tuple[np.ndarray, int]:
    """Token ids of ``text`` and the number of characters left out because a char vocabulary lacks
    them (always 0 for byte-level BPE, which encodes any text)."""
    if isinstance(tok, CharTokenizer):
        unknown = set(text) - tok.stoi.keys()
        if unknown:
            n_unknown = sum(text.count(c) for c in unknown)
            text = text.translate(dict.fromkeys(map(ord, unknown)))
            return tok.encode_array(text), n_unknown
    return tok.encode_array(text), 0


def _default_sample(text: str) -> str:
    """The first ~``SAMPLE_CHARS`` characters of ``text``, ended at a line break when one is near."""
    if len(text) <= SAMPLE_CHARS:
        return text
    cut = text.rfind("\n", SAMPLE_CHARS // 2, SAMPLE_CHARS + 1)
    return text[: cut + 1] if cut != -1 else text[:SAMPLE_CHARS]


def _train_texts(train_texts: str | Iterable[str]) -> list[str]:
    if isinstance(train_texts, str):
        return [train_texts]
    if isinstance(train_texts, bytes | bytearray) or not isinstance(train_texts, Iterable):
        raise TypeError(
            f"train_texts is a {type(train_texts).__name__}; pass an iterable of str "
            "(e.g. [d.text for d in train_docs])"
        )
    texts = []
    for i, t in enumerate(train_texts):
        text = getattr(t, "text", t)  # lmkit.data.Document objects are accepted too
        if not isinstance(text, str):
            raise TypeError(f"train_texts item {i} is a {type(t).__name__}; expected str or Document")
        texts.append(text)
    if not any(texts):
        raise ValueError("train_texts holds no text; pass the training documents' texts")
    return texts


def _check_vocab_sizes(vocab_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(vocab_sizes)
    bad = [v for v in sizes if isinstance(v, bool) or not isinstance(v, int | np.integer)]
    if bad:
        raise TypeError(f"vocab_sizes must be ints, got {bad!r}")
    repeated = sorted({v for v in sizes if sizes.count(v) > 1})
    if repeated:
        raise ValueError(f"vocab_sizes repeats {repeated}; each BPE size gives one row, so list each once")
    return tuple(int(v) for v in sizes)


def _measure(name: str, tok: TokenizerBase, eval_text: str, sample: str, seconds: float) -> dict:
    ids, unknown = _lenient_ids(tok, eval_text)
    sample_ids, sample_unknown = _lenient_ids(tok, sample)
    # An unknown character would need an <unk> token of its own: count it as one token.
    n_tokens = len(ids) + unknown
    used = int(np.count_nonzero(np.bincount(ids, minlength=tok.vocab_size)))
    return {
        "tokenizer": name,
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "chars_per_token": len(eval_text) / n_tokens,
        "eval_tokens": n_tokens,
        "sample_tokens": len(sample_ids) + sample_unknown,
        "vocab_used": used / tok.vocab_size,
        "unknown_chars": unknown,
        "train_seconds": seconds,
    }


def compare_tokenizers(
    train_texts: str | Iterable[str],
    eval_text: str,
    *,
    vocab_sizes: Sequence[int] = DEFAULT_VOCAB_SIZES,
    sample: str | None = None,
) -> TokenizerComparison:
    """Train a char tokenizer and one byte-level BPE per vocabulary size; measure each on ``eval_text``.

    ``train_texts`` is an iterable of strings (or ``Document`` objects); ``eval_text`` is held-out
    text. The table has one row per tokenizer ("char", then "bpe-<size>" in the order given), with
    columns: ``tokenizer``, ``kind``, ``vocab_size`` (actual; BPE can stop short of the request when
    no pair is frequent enough), ``chars_per_token`` (``len(eval_text) / eval_tokens``),
    ``eval_tokens``, ``sample_tokens`` (tokens of ``sample``; default: the first ~500 characters of
    ``eval_text``), ``vocab_used`` (fraction of the vocabulary occurring in ``eval_text``),
    ``unknown_chars`` (occurrences of characters in ``eval_text`` that the char vocabulary lacks;
    each is counted as one token, as if it were an ``<unk>`` token; always 0 for byte-level BPE) and
    ``train_seconds``.
    """
    if not isinstance(eval_text, str) or not eval_text:
        raise ValueError(f"eval_text must be a non-empty str of held-out text, got {type(eval_text).__name__} "
                         f"of length {len(eval_text) if isinstance(eval_text, str) else '-'}")
    if sample is None:
        sample = _default_sample(eval_text)
    elif not isinstance(sample, str):
        raise TypeError(f"sample is a {type(sample).__name__}; pass a str or None (the start of eval_text)")
    texts = _train_texts(train_texts)
    sizes = _check_vocab_sizes(vocab_sizes)

    trainers: list[tuple[str, Callable[[], TokenizerBase]]] = [("char", lambda: CharTokenizer.train(texts))]
    trainers += [(f"bpe-{v}", lambda v=v: BPETokenizer.train(texts, vocab_size=v)) for v in sizes]
    rows, tokenizers = [], {}
    for name, train in trainers:
        start = time.perf_counter()
        tok = train()
        seconds = time.perf_counter() - start
        tokenizers[name] = tok
        rows.append(_measure(name, tok, eval_text, sample, seconds))
        logger.info("%s: %.2f chars/token on %s held-out characters (trained in %.2f s)",
                    name, rows[-1]["chars_per_token"], f"{len(eval_text):,}", seconds)
    return TokenizerComparison(pd.DataFrame(rows), tokenizers, sample)


def token_frequencies(tokenizer: TokenizerBase, text: str) -> pd.DataFrame:
    """How often each token of ``tokenizer`` occurs in ``text``, most frequent first.

    Columns: ``rank`` (1-based), ``token_id``, ``token`` (the decoded token made printable:
    newline as ``\\n``, space as ``␣``), ``count`` and ``frequency`` (count / all tokens). Only
    tokens that occur are listed; ties are broken by token id. Characters a char vocabulary lacks
    are left out (with a logged warning), not raised.
    """
    if not isinstance(tokenizer, TokenizerBase):
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}; pass an lmkit CharTokenizer or BPETokenizer")
    if not isinstance(text, str):
        raise TypeError(f"text is a {type(text).__name__}; pass a str")
    ids, unknown = _lenient_ids(tokenizer, text)
    if unknown:
        logger.warning("token_frequencies: left out %d character(s) the char vocabulary lacks", unknown)
    counts = np.bincount(ids, minlength=tokenizer.vocab_size)
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]  # count desc, then id asc
    total = max(int(counts.sum()), 1)
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1),
        "token_id": order,
        "token": [printable(tokenizer.decode([int(i)])) for i in order],  # one per vocabulary entry
        "count": counts[order],
        "frequency": counts[order] / total,
    })


def _rank_counts(freqs: pd.DataFrame | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(freqs, pd.DataFrame):
        missing = [c for c in ("rank", "count") if c not in freqs.columns]
        if missing:
            raise ValueError(
                f"zipf_fit needs a DataFrame with columns 'rank' and 'count' (from token_frequencies); "
                f"missing {missing}, got columns {list(freqs.columns)}"
            )
        return freqs["rank"].to_numpy(dtype=float), freqs["count"].to_numpy(dtype=float)
    counts = np.asarray(freqs, dtype=float)
    if counts.ndim != 1:
        raise ValueError(f"zipf_fit needs 1-D counts (rank 1 first), got shape {counts.shape}")
    return np.arange(1, counts.size + 1, dtype=float), counts


def zipf_fit(
    freqs: pd.DataFrame | Sequence[float] | np.ndarray, min_rank: int = 1, max_rank: int | None = None
) -> dict:
    """Fit ``log(count) = log(C) - s * log(rank)`` by least squares over ranks ``min_rank..max_rank``.

    ``freqs`` is ``token_frequencies``' table (columns ``rank``, ``count``) or counts sorted with
    rank 1 first. Returns ``{"s", "C", "r2", "min_rank", "max_rank", "points"}``: the exponent (about
    1 for word counts of natural language), the scale, the coefficient of determination of the
    log-log fit, and the rank range and number of points used.
    """
    ranks, counts = _rank_counts(freqs)
    if not is_int(min_rank, 1):
        raise ValueError(f"min_rank={min_rank!r} must be an int >= 1")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer)
                                 or max_rank < min_rank):
        raise ValueError(f"max_rank={max_rank!r} must be None or an int >= min_rank={min_rank}")
    keep = ranks >= min_rank
    if max_rank is not None:
        keep &= ranks <= max_rank
    ranks, counts = ranks[keep], counts[keep]
    if (counts <= 0).any() or not np.isfinite(counts).all():
        raise ValueError("zipf_fit needs positive, finite counts (log of zero is undefined); drop zero counts")
    if np.unique(ranks).size < 2:
        raise ValueError(
            f"zipf_fit needs at least 2 distinct ranks in [{min_rank}, {max_rank}], got {ranks.size}; "
            "widen the rank range"
        )
    x, y = np.log(ranks), np.log(counts)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / spread if spread > 0 else 1.0
    return {
        "s": float(-slope),
        "C": float(np.exp(intercept)),
        "r2": r2,
        "min_rank": int(ranks.min()),
        "max_rank": int(ranks.max()),
        "points": int(ranks.size),
    }


def sample_tokenization(tokenizer: TokenizerBase, text: str) -> list[str]:
    """The pieces ``tokenizer`` cuts ``text`` into, one decoded string per token; they join back to
    ``text``.

    Meant for short texts. With byte-level BPE a character whose UTF-8 bytes are split across
    tokens cannot be shown by either token alone, so those tokens stay together in one piece.
    """
    if not isinstance(tokenizer, TokenizerBase):
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}; pass an lmkit CharTokenizer or BPETokenizer")
    pieces: list[str] = []
    pending: list[int] = []
    pos = 0
    for i in tokenizer.encode(text):
        pending.append(i)
        piece = tokenizer.decode(pending)
        if text.startswith(piece, pos):
            pieces.append(piece)
            pos += len(piece)
            pending = []
    if pending:
        pieces.append(tokenizer.decode(pending))
    return pieces
