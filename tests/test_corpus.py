"""The Shakespeare metadata table (shipped as package data) and the helpers that read it."""

import math

import pandas as pd
import pytest

from lmkit.corpus import GENRES, describe_documents, shakespeare_metadata, work_groups
from lmkit.data import Document, fetch_shakespeare

# The First Folio (1623) catalogue, as work ids of the table; Troilus and Cressida (printed between
# histories and tragedies, titled a tragedy) is added to the tragedies, Pericles (not in the First
# Folio) to the comedies.
FOLIO_COMEDIES = {
    "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
    "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
    "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
    "twelfth_night", "winters_tale",
}
FOLIO_HISTORIES = {
    "king_john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
    "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii",
}
FOLIO_TRAGEDIES = {
    "coriolanus", "titus_andronicus", "romeo_and_juliet", "timon_of_athens", "julius_caesar", "macbeth",
    "hamlet", "king_lear", "othello", "antony_and_cleopatra", "cymbeline",
}
POEMS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    return shakespeare_metadata()


def test_table_shape_and_allowed_values(meta):
    assert meta.index.name == "file" and meta.index.is_unique
    assert len(meta) == 77
    assert list(meta.columns) == ["work", "title", "edition", "genre", "note"]
    assert set(meta["genre"]) == set(GENRES)
    assert set(meta["edition"]) == {"modern", "folio"}
    assert ((meta["edition"] == "folio") == meta.index.str.endswith("_gut_f")).all()


def test_genres_follow_the_first_folio(meta):
    works = meta.groupby("genre")["work"].agg(set)
    assert len(FOLIO_COMEDIES) == 14 and len(FOLIO_HISTORIES) == 10 and len(FOLIO_TRAGEDIES) == 11
    assert works["comedy"] == FOLIO_COMEDIES | {"pericles"}
    assert works["history"] == FOLIO_HISTORIES
    assert works["tragedy"] == FOLIO_TRAGEDIES | {"troilus_and_cressida"}
    assert works["poetry"] == POEMS
    files = meta["genre"].value_counts()
    assert files.to_dict() == {"comedy": 29, "tragedy": 23, "history": 20, "poetry": 5}


def test_notes_explain_the_exceptions(meta):
    pericles = meta.loc["pericles_gut", "note"]
    assert "1664" in pericles and "Third Folio" in pericles
    assert "tragedy" in meta.loc["troilus_and_cressida_gut", "note"]
    assert (meta["note"] == "").sum() > len(meta) / 2  # mostly empty


def test_both_editions_of_a_work_agree(meta):
    per_work = meta.groupby("work").agg(files=("title", "size"), titles=("title", "nunique"),
                                        genres=("genre", "nunique"), editions=("edition", "nunique"))
    assert (per_work["titles"] == 1).all() and (per_work["genres"] == 1).all()
    assert ((per_work["files"] == 1) | (per_work["editions"] == 2)).all()
    assert (per_work["files"] == 2).sum() == 35
    assert meta.loc["twelfe-night_gut_f", "work"] == meta.loc["twelfth_night_gut", "work"]
    assert meta.loc["hamlet_gut_f", "title"] == "Hamlet, Prince of Denmark"


@pytest.mark.network
def test_every_corpus_file_has_exactly_one_row(meta):
    stems = {p.stem for p in fetch_shakespeare().glob("*.txt")} - {"metadata"}
    assert stems == set(meta.index)


def test_describe_documents_counts_and_joins_metadata():
    docs = [Document("zz_unknown", "one two\nthree"), Document("hamlet_gut_f", "To be, or not\nto be\n")]
    table = describe_documents(docs)
    assert table["name"].tolist() == ["hamlet_gut_f", "zz_unknown"]
    hamlet, unknown = table.iloc[0], table.iloc[1]
    assert (hamlet["edition"], hamlet["genre"], hamlet["work"]) == ("folio", "tragedy", "hamlet")
    assert (hamlet["characters"], hamlet["lines"], hamlet["words"]) == (20, 2, 6)
    assert all(math.isnan(unknown[c]) for c in ("title", "edition", "genre", "work"))
    assert (unknown["characters"], unknown["lines"], unknown["words"]) == (13, 2, 3)


def test_work_groups_and_custom_metadata():
    docs = [Document("a1", "x"), Document("a2", "y"), Document("lone", "z")]
    custom = pd.DataFrame({"file": ["a1", "a2"], "work": ["a", "a"], "title": ["A", "A"],
                           "edition": ["modern", "folio"], "genre": ["comedy", "comedy"]})
    assert work_groups(docs, custom) == {"a1": "a", "a2": "a", "lone": "lone"}
    assert work_groups([Document("lear_gut", "x")]) == {"lear_gut": "king_lear"}
    with pytest.raises(ValueError, match=r"genre values \['farce'\]"):
        work_groups(docs, custom.assign(genre="farce"))
    with pytest.raises(ValueError, match="'file'"):
        work_groups(docs, custom.drop(columns="file"))
