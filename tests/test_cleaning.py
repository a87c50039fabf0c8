"""Cleaning steps on hand-made text, and the runner's report."""

import pytest

from lmkit.cleaning import (
    STEP_COLUMNS,
    clean_documents,
    lowercase,
    normalize_unicode,
    normalize_whitespace,
)
from lmkit.data import Document


def test_normalize_unicode_composes_and_decomposes():
    assert normalize_unicode("cafe\u0301") == "caf\u00e9"
    assert len(normalize_unicode("e\u0301")) == 1
    assert normalize_unicode("\u00e9", form="NFD") == "e\u0301"
    assert normalize_unicode("\ufb01ne", form="NFKC") == "fine"  # the fi ligature
    with pytest.raises(ValueError, match=r"form='NFX'.*'NFC'"):
        normalize_unicode("x", form="NFX")


@pytest.mark.parametrize("raw, clean", [
    ("a\r\nb\rc", "a\nb\nc"),                        # one kind of line break
    ("a\tb\u00a0c\u2003d", "a b c d"),               # tab, no-break space, em space
    ("line   \nnext \t", "line\nnext"),              # trailing spaces
    ("a\n\n\n\n\n\nb", "a\n\n\nb"),                  # five blank lines -> two
    ("a\n\n\nb", "a\n\n\nb"),                        # two blank lines stay
    ("a\n   \n\t\n \nb", "a\n\n\nb"),                 # whitespace-only lines are blank: 3 -> 2
    ("\n\n  Bar. Who's there?\n\n", "  Bar. Who's there?"),  # leading/trailing blank lines, indent kept
    ("   Fran. Nay  answer   me", "   Fran. Nay answer me"),  # indentation kept, inner runs collapsed
    ("", ""),
])
def test_normalize_whitespace(raw, clean):
    assert normalize_whitespace(raw) == clean


def test_lowercase():
    assert lowercase("Actus Primus. SCOENA Prima.") == "actus primus. scoena prima."


def _docs():
    return [
        Document("a_composed", "caf\u00e9 " * 300),                # NFC already, trailing space only
        Document("b_decomposed", "cafe\u0301 " * 300 + "\r\n"),   # changed by NFC and whitespace
        Document("c_short", "Too short.\n\n\n\n\n"),               # 10 characters after cleaning
        Document("d_clean", "x" * 1200),                            # nothing to do
        Document("e_padded", "Mostly padding." + "\n" * 1500),     # long only before cleaning
    ]


def test_report_counts_changes_and_drops():
    kept, report = clean_documents(iter(_docs()), min_chars=1000)  # an iterator: read once
    assert [d.name for d in kept] == ["a_composed", "b_decomposed", "d_clean"]
    assert kept[1].text == kept[0].text == ("caf\u00e9 " * 300).rstrip()
    steps = report.steps.set_index("step")
    assert list(report.steps.columns) == STEP_COLUMNS
    assert list(steps.index) == ["unicode_nfc", "whitespace", "min_chars"]
    assert steps.loc["unicode_nfc", "documents_changed"] == 1
    assert steps.loc["unicode_nfc", "characters_before"] - steps.loc["unicode_nfc", "characters_after"] == 300
    assert steps.loc["whitespace", "documents_changed"] == 4
    assert steps.loc["min_chars", "documents_dropped"] == 2
    assert steps.loc["min_chars", "characters_after"] == sum(len(d.text) for d in kept)
    assert steps["documents_dropped"].sum() == 2
    assert report.dropped == ["c_short", "e_padded"]  # the filter counts characters after cleaning
    row = report.documents.set_index("name").loc["c_short"]
    assert not row["kept"] and row["characters_after"] == 10 and "min_chars=1,000" in row["reason"]
    assert report.documents.set_index("name").loc["b_decomposed", "changed_by"] == "unicode_nfc, whitespace"


def test_steps_can_be_switched_off_and_lowercase_on():
    kept, report = clean_documents(_docs(), nfc=False, whitespace=False, lowercase=True, min_chars=0)
    assert len(kept) == 5 and report.dropped == []
    assert list(report.steps["step"]) == ["lowercase", "min_chars"]
    assert report.steps.iloc[0]["documents_changed"] == 2  # "Too short.", "Mostly padding."
    assert kept[1].text == _docs()[1].text  # NFC off: still decomposed
    assert kept[2].text.startswith("too short.")


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1000"])
def test_min_chars_is_validated(bad):
    with pytest.raises(ValueError, match=r"min_chars=.*must be an int >= 0"):
        clean_documents(_docs(), min_chars=bad)


def test_non_documents_are_refused():
    with pytest.raises(TypeError, match="load_documents"):
        clean_documents(["just a string"])
