"""Tokenizers: text <-> integer ids, with one interface for two kinds.

- ``CharTokenizer``: one id per character; the vocabulary is the sorted set of characters seen in
  training (nanoGPT's ``shakespeare_char``). Small vocabulary, long sequences, easy to read.
- ``BPETokenizer``: byte-level byte-pair encoding (GPT-2's scheme, Radford et al. 2019), trained
  locally with the Hugging Face ``tokenizers`` library. It starts from the 256 byte symbols, so it
  encodes any text, including characters it never saw in training.

Both offer ``train`` (classmethod), ``encode(str) -> list[int]``, ``encode_array(str) -> np.ndarray``
(the fast path for whole corpora), ``decode(ids) -> str``, ``vocab_size``, ``kind`` and JSON
persistence (``to_dict``/``from_dict``, ``save``/``load``). ``load_tokenizer(path)`` reads either kind.
Nothing is ever pickled.

This file is named ``tokenizer`` (singular) so it never reads as the ``tokenizers`` package.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

from .files import read_json, write_json_atomic
from .params import is_int

logger = logging.getLogger(__name__)

EOT = "<|endoftext|>"  # GPT-2's end-of-text token: separates documents in a BPE token stream
TOKENIZER_FORMAT = "lmkit-tokenizer/1"
_MIN_BPE_VOCAB = 257  # 256 byte symbols + the end-of-text token
_CHUNK_CHARS = 1 << 12  # encode_batch pieces: ~4k characters measured fastest on 9.5 MB of Shakespeare


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a ``vocab_size`` vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _texts(text_or_texts: str | Iterable[str], what: str) -> Iterator[str]:
    """Yield the texts of a string or an iterable of strings, refusing anything else."""
    if isinstance(text_or_texts, str):
        yield text_or_texts
        return
    if isinstance(text_or_texts, bytes | bytearray) or not isinstance(text_or_texts, Iterable):
        raise TypeError(
            f"{what} expects a str or an iterable of str, got {type(text_or_texts).__name__}; "
            "decode bytes first (e.g. data.decode('utf-8'))"
        )
    for i, text in enumerate(text_or_texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}: item {i} is a {type(text).__name__}, expected str")
        yield text


def _require_str(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} expects a str, got {type(text).__name__}")
    return text


def _id_array(ids: Any) -> np.ndarray:
    """Ids from a list, tuple, numpy array or 1-D torch tensor (duck-typed ``.tolist()``) as int64."""
    if not isinstance(ids, np.ndarray | list | tuple) and hasattr(ids, "tolist"):
        ids = ids.tolist()  # torch tensors (any device) without importing torch
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}; decode one row at a time")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"decode expects integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_id_range(arr: np.ndarray, vocab_size: int) -> None:
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        shown = ", ".join(str(int(i)) for i in bad[:20])
        raise ValueError(
            f"{bad.size} id(s) outside the vocabulary [0, {vocab_size}): {shown}; "
            "decode ids produced by this tokenizer (a model with a larger vocab_size can sample ids "
            "the tokenizer does not have)"
        )


_CUT = re.compile(r"(?<=\S)\s")  # a whitespace character right after a non-space one


def _safe_chunks(text: str, size: int | None = None) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` (default ``_CHUNK_CHARS``) characters that encode
    exactly like the whole.

    Cuts fall only just before a whitespace character that follows a non-space one (a newline where
    there is one within the next ``size`` characters, else a space): GPT-2's pre-tokenizer regex never
    puts a non-space and a following whitespace into one piece, so such a cut is always a pre-token
    boundary and byte-level BPE (which merges only inside pre-tokens) gives the same ids. A cut right
    after whitespace would not be safe: ``"\\n  x"`` pre-tokenizes as ``"\\n "``, ``" x"``. Cutting at
    spaces too keeps a text without newlines (one 50 MB line) from reaching the trainer as a single
    piece, which made its peak memory grow with the line.
    """
    size = size or _CHUNK_CHARS
    start = 0
    while len(text) - start > size:
        line_end = text.find("\n", start + size, start + 2 * size)
        while line_end != -1 and text[line_end - 1].isspace():
            line_end = text.find("\n", line_end + 1, start + 2 * size)
        cut = line_end if line_end != -1 else (m.start() if (m := _CUT.search(text, start + size)) else -1)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


class TokenizerBase:
    """What every lmkit tokenizer offers; see ``CharTokenizer`` and ``BPETokenizer``."""

    kind: ClassVar[str] = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a numpy array (uint16, or uint32 for vocabularies over 65,536)."""
        raise NotImplementedError

    def decode(self, ids: Any) -> str:
        """Text of ``ids`` (a list, numpy array or 1-D torch tensor)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """A JSON-able description from which ``from_dict`` rebuilds the tokenizer."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerBase:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as a JSON file (atomically) and return its path."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        logger.debug("saved %r to %s", self, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenizerBase:
        """Read a tokenizer saved with ``save``; ValueError naming the file if it is not one of ours."""
        d = read_json(path, "tokenizer file", "re-create it with tokenizer.save(path)")
        try:
            tok = tokenizer_from_dict(d)
        except ValueError as e:
            raise ValueError(
                f"tokenizer file {path} is not a valid lmkit tokenizer: {e}; "
                "re-create it with tokenizer.save(path)"
            ) from None
        if not isinstance(tok, cls):
            raise ValueError(
                f"tokenizer file {path} holds a {tok.kind!r} tokenizer, not {cls.kind!r}; "
                "use lmkit.tokenizer.load_tokenizer(path), which reads any kind"
            )
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class CharTokenizer(TokenizerBase):
    """One id per character. ``CharTokenizer.train(text)`` uses the sorted set of characters."""

    kind: ClassVar[str] = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        bad = [c for c in chars if not (isinstance(c, str) and len(c) == 1)]
        if bad:
            raise ValueError(f"CharTokenizer vocabulary must hold single characters, got {bad[:10]!r}")
        if not chars:
            raise ValueError("CharTokenizer vocabulary is empty; train it on non-empty text")
        if len(set(chars)) != len(chars):
            dupes = sorted(c for c, n in Counter(chars).items() if n > 1)
            raise ValueError(f"CharTokenizer vocabulary repeats characters {dupes[:20]!r}")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # id -> code point
        self._lookup: np.ndarray | None = None  # code point -> id, built on first encode_array

    @classmethod
    def train(cls, text_or_texts: str | Iterable[str]) -> CharTokenizer:
        """A tokenizer whose vocabulary is the sorted set of characters in the text(s)."""
        seen: set[str] = set()
        for text in _texts(text_or_texts, "CharTokenizer.train"):
            seen.update(text)
        if not seen:
            raise ValueError("CharTokenizer.train got no characters; pass non-empty text")
        return cls(sorted(seen))

    fit = train

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """One id per character of ``text``; ValueError listing characters outside the vocabulary."""
        text = _require_str(text, "CharTokenizer.encode")
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pass  # raised below, outside the handler, so the error reads as one ValueError
        self._raise_unknown(set(text) - self.stoi.keys())

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` for big texts: UTF-32 code points through a lookup table, no Python list."""
        text = _require_str(text, "CharTokenizer.encode_array")
        dtype = token_dtype(self.vocab_size)
        cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        if cps.size == 0:
            return np.empty(0, dtype=dtype)
        lookup = self._code_point_lookup()
        # code points beyond the table land on its last entry, the "unknown" marker
        ids = lookup[np.minimum(cps, len(lookup) - 1)]
        if (ids == self.vocab_size).any():
            self._raise_unknown({chr(c) for c in np.unique(cps[ids == self.vocab_size])})
        return ids.astype(dtype)

    def decode(self, ids: Any) -> str:
        """The characters of ``ids``; ValueError for ids outside the vocabulary."""
        arr = _id_array(ids)
        _check_id_range(arr, self.vocab_size)
        return self._codepoints[arr].tobytes().decode("utf-32-le", errors="surrogatepass")

    def to_dict(self) -> dict:
        return {"type": self.kind, "format": TOKENIZER_FORMAT, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        """Rebuild from ``to_dict()``'s output."""
        if not isinstance(d, dict) or d.get("type") != cls.kind:
            raise ValueError(f"expected a dict with type={cls.kind!r}, got {_describe(d)}")
        chars = d.get("chars")
        if not isinstance(chars, list):
            raise ValueError(f"key 'chars' must be a list of characters, got {_describe(chars)}")
        return cls(chars)

    def _code_point_lookup(self) -> np.ndarray:
        if self._lookup is None:
            unknown = self.vocab_size  # never a valid id
            lookup = np.full(int(self._codepoints.max()) + 2, unknown, dtype=np.uint32)
            lookup[self._codepoints] = np.arange(self.vocab_size, dtype=np.uint32)
            self._lookup = lookup
        return self._lookup

    def _raise_unknown(self, unknown: set[str]) -> NoReturn:
        shown = sorted(unknown)[:20]
        more = f" (and {len(unknown) - len(shown)} more)" if len(unknown) > len(shown) else ""
        raise ValueError(
            f"{len(unknown)} character(s) not in the vocabulary of this CharTokenizer "
            f"(vocab_size={self.vocab_size}): {', '.join(repr(c) for c in shown)}{more}; "
            "train the tokenizer on text that contains them, or clean the text first"
        )


class BPETokenizer(TokenizerBase):
    """Byte-level BPE (GPT-2 style) built with Hugging Face ``tokenizers``; encodes any text."""

    kind: ClassVar[str] = "bpe"

    def __init__(self, hf_tokenizer: Any):
        eot_id = hf_tokenizer.token_to_id(EOT)
        if eot_id is None:
            raise ValueError(f"BPE tokenizer has no {EOT!r} token; train it with BPETokenizer.train")
        self._tok = hf_tokenizer
        self.eot_id: int = eot_id

    @classmethod
    def train(
        cls, texts: str | Iterable[str], vocab_size: int = 512, min_frequency: int = 2
    ) -> BPETokenizer:
        """Learn merges on ``texts`` until the vocabulary has ``vocab_size`` tokens (or no pair is
        frequent enough: the result can be smaller). ``vocab_size`` counts the 256 byte symbols and
        ``<|endoftext|>``, so it must be at least 257."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if not is_int(vocab_size, _MIN_BPE_VOCAB):
            raise ValueError(
                f"BPE vocab_size={vocab_size!r} is too small: the minimum is {_MIN_BPE_VOCAB} "
                "(256 byte symbols + <|endoftext|>); use e.g. vocab_size=512"
            )
        if not is_int(min_frequency, 1):
            raise ValueError(f"min_frequency={min_frequency!r} must be an int >= 1")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        pieces = (p for text in _texts(texts, "BPETokenizer.train") for p in _safe_chunks(text))
        tok.train_from_iterator(pieces, trainer=trainer)
        result = cls(tok)
        logger.info("trained %r (requested vocab_size=%d)", result, vocab_size)
        return result

    fit = train

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``. A literal ``"<|endoftext|>"`` in the text becomes ``eot_id``."""
        text = _require_str(text, "BPETokenizer.encode")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` for big texts: encodes safe chunks in parallel (``encode_batch``); same ids."""
        text = _require_str(text, "BPETokenizer.encode_array")
        dtype = token_dtype(self.vocab_size)
        encodings = self._tok.encode_batch(list(_safe_chunks(text)), add_special_tokens=False)
        parts = [np.asarray(e.ids, dtype=dtype) for e in encodings]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    def decode(self, ids: Any) -> str:
        """Text of ``ids``; special tokens are kept, so ``decode(encode(t)) == t`` for every ``t``."""
        arr = _id_array(ids)
        _check_id_range(arr, self.vocab_size)
        return self._tok.decode(arr.tolist(), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"type": self.kind, "format": TOKENIZER_FORMAT, "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        """Rebuild from ``to_dict()``'s output (the ``tokenizers`` JSON sits under ``"tokenizer"``)."""
        from tokenizers import Tokenizer

        if not isinstance(d, dict) or d.get("type") != cls.kind:
            raise ValueError(f"expected a dict with type={cls.kind!r}, got {_describe(d)}")
        spec = d.get("tokenizer")
        if not isinstance(spec, dict):
            raise ValueError(f"key 'tokenizer' must be a tokenizers JSON object, got {_describe(spec)}")
        try:
            tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the Rust side raises a plain Exception
            raise ValueError(f"the 'tokenizer' object is not a valid tokenizers model ({e})") from None
        return cls(tok)


_KINDS: dict[str, type[TokenizerBase]] = {"char": CharTokenizer, "bpe": BPETokenizer}


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(obj)[:10]}"
    return f"{type(obj).__name__} {obj!r:.60}"


def tokenizer_from_dict(d: dict) -> TokenizerBase:
    """Rebuild a tokenizer of any kind from ``to_dict()``'s output (dispatch on ``d["type"]``)."""
    if not isinstance(d, dict):
        raise ValueError(f"a tokenizer description must be a dict, got {_describe(d)}")
    if "type" not in d:
        raise ValueError(f"a tokenizer description needs a 'type' key ({' or '.join(_KINDS)}); got {_describe(d)}")
    kind = d["type"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r}; known types: {', '.join(_KINDS)}")
    return _KINDS[kind].from_dict(d)


def load_tokenizer(path: str | os.PathLike) -> TokenizerBase:
    """Read a tokenizer of any kind saved with ``tokenizer.save(path)``."""
    return TokenizerBase.load(path)
