"""Text cleaning: small pure functions on a string, and a runner that reports what each one changed.

The steps follow the first stages of a pretraining data pipeline such as SlimPajama's (Cerebras,
2023: NFC normalisation, then dropping documents too short to be useful, before near-duplicate
removal in ``lmkit.dedup``), in miniature:

    normalize_unicode   one code point sequence per character ("e" + U+0301 -> "é")
    normalize_whitespace  one kind of line break, one kind of space, no trailing spaces, no long gaps
    lowercase           optional: a smaller vocabulary at the price of case information
    min_chars           drop documents shorter than this after cleaning

``clean_documents`` runs them one document at a time (any iterable works, nothing is read twice)
and returns the kept documents with a ``CleaningReport``: a per-step table (documents changed,
characters before/after, documents dropped) and a per-document table.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import pandas as pd

from .data import Document
from .params import is_int

logger = logging.getLogger(__name__)

NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")

# the line breaks str.splitlines() knows (except \n itself): \r\n first, so it becomes one \n
_LINE_BREAKS = re.compile(r"\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# horizontal whitespace other than " ": tab, no-break space, the U+2000 block, ideographic space...
_OTHER_SPACES = re.compile(r"[^\S\n ]")
_TRAILING_SPACES = re.compile(r" +$", re.MULTILINE)
# a run of two or more spaces after a non-space: inside a line, never its indentation
_INNER_SPACE_RUNS = re.compile(r"(?<=\S)  +")
_LONG_GAPS = re.compile(r"\n{4,}")  # four newlines = three blank lines


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Unicode normal form ``form`` of ``text`` (NFC by default: composed characters).

    NFC makes visually identical strings equal ("e" + combining acute U+0301 becomes "é", U+00E9), so
    a tokenizer sees one symbol. The K forms (NFKC, NFKD) also fold compatibility characters
    (ligature "ﬁ" -> "fi", superscript "²" -> "2"), which loses information.
    """
    if form not in NORMAL_FORMS:
        raise ValueError(f"form={form!r} is not a Unicode normal form; use one of {list(NORMAL_FORMS)}")
    return unicodedata.normalize(form, text)


def normalize_whitespace(text: str) -> str:
    """One kind of line break and space, no trailing spaces, at most two blank lines in a row.

    - every line break (``\\r\\n``, ``\\r``, form feed, U+2028 ...) becomes ``\\n``;
    - tabs, no-break spaces and other Unicode spaces become one ``" "`` each;
    - indentation at the start of a line is kept as it is (it carries verse layout and the Folio's
      speech prefixes), while runs of spaces inside a line become one space;
    - spaces at the end of a line are removed;
    - three or more blank lines in a row become two;
    - blank lines at the start and all whitespace at the end are removed (no final newline), so
      documents join cleanly with a separator.
    """
    text = _LINE_BREAKS.sub("\n", text)
    text = _OTHER_SPACES.sub(" ", text)
    text = _TRAILING_SPACES.sub("", text)
    text = _INNER_SPACE_RUNS.sub(" ", text)
    text = _LONG_GAPS.sub("\n\n\n", text)
    return text.lstrip("\n").rstrip()


def lowercase(text: str) -> str:
    """``text`` in lower case (``str.lower``)."""
    return text.lower()


# (step name, function, its flag in clean_documents), in the order they run; kept at module level
# because clean_documents' ``lowercase`` argument shadows the function of that name
_TEXT_STEPS: tuple[tuple[str, Callable[[str], str], str], ...] = (
    ("unicode_nfc", normalize_unicode, "nfc"),
    ("whitespace", normalize_whitespace, "whitespace"),
    ("lowercase", lowercase, "lowercase"),
)
STEP_COLUMNS = ["step", "documents_changed", "characters_before", "characters_after", "documents_dropped"]
DOCUMENT_COLUMNS = ["name", "characters_before", "characters_after", "changed_by", "kept", "reason"]


@dataclass(frozen=True)
class CleaningReport:
    """What ``clean_documents`` did.

    ``steps``: one row per enabled step, in order (``STEP_COLUMNS``); the last row, ``min_chars``,
    is the length filter. ``documents``: one row per input document (``DOCUMENT_COLUMNS``):
    lengths before and after, the steps that changed it (comma-separated), whether it was kept and,
    if not, why.
    """

    steps: pd.DataFrame
    documents: pd.DataFrame

    @property
    def dropped(self) -> list[str]:
        """Names of the documents that were dropped."""
        return self.documents.loc[~self.documents["kept"], "name"].tolist()

    def _repr_html_(self) -> str:
        return self.steps._repr_html_()


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def clean_documents(
    docs: Iterable[Document],
    *,
    nfc: bool = True,
    whitespace: bool = True,
    lowercase: bool = False,
    min_chars: int = 1000,
) -> tuple[list[Document], CleaningReport]:
    """Run the enabled cleaning steps on each document, then drop those under ``min_chars``.

    Documents are processed one at a time, so ``docs`` may be any iterable (a generator reading
    files, for example). The length filter counts characters after cleaning. Returns the kept
    documents (cleaned, in input order, ``path`` unchanged) and a ``CleaningReport``; its ``steps``
    table has one row per enabled step plus the ``min_chars`` row, e.g. for a notebook's
    before/after view.
    """
    flags = {"nfc": nfc, "whitespace": whitespace, "lowercase": lowercase}
    for name, value in flags.items():
        _check_flag(name, value)
    if not is_int(min_chars, 0):
        raise ValueError(f"min_chars={min_chars!r} must be an int >= 0 (0 keeps every document), e.g. 1000")
    steps = [(name, fn) for name, fn, flag in _TEXT_STEPS if flags[flag]]
    counts = {name: dict(step=name, documents_changed=0, characters_before=0, characters_after=0,
                         documents_dropped=0) for name, _ in steps}
    filter_row = dict(step="min_chars", documents_changed=0, characters_before=0, characters_after=0,
                      documents_dropped=0)
    kept: list[Document] = []
    rows = []
    for doc in docs:
        if not isinstance(doc, Document):
            raise TypeError(f"clean_documents expects Document objects, got a {type(doc).__name__}; "
                            "get them from lmkit.data.load_documents(source)")
        text, changed_by = doc.text, []
        for name, fn in steps:
            new = fn(text)
            row = counts[name]
            row["characters_before"] += len(text)
            row["characters_after"] += len(new)
            if new != text:
                row["documents_changed"] += 1
                changed_by.append(name)
            text = new
        keep = len(text) >= min_chars
        filter_row["characters_before"] += len(text)
        if keep:
            filter_row["characters_after"] += len(text)
            kept.append(replace(doc, text=text) if changed_by else doc)
        else:
            filter_row["documents_dropped"] += 1
        reason = "" if keep else f"{len(text):,} characters after cleaning < min_chars={min_chars:,}"
        rows.append(dict(name=doc.name, characters_before=len(doc.text), characters_after=len(text),
                         changed_by=", ".join(changed_by), kept=keep, reason=reason))
    report = CleaningReport(
        steps=pd.DataFrame([*counts.values(), filter_row], columns=STEP_COLUMNS),
        documents=pd.DataFrame(rows, columns=DOCUMENT_COLUMNS),
    )
    if report.dropped:
        logger.info("dropped %d document(s) shorter than %d characters: %s",
                    len(report.dropped), min_chars, report.dropped[:10])
    logger.info("cleaned %d documents, kept %d (%s characters)",
                len(rows), len(kept), f"{filter_row['characters_after']:,}")
    return kept, report
